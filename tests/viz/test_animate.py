"""torchstn.viz.animate: one frame per epoch, written as looping GIFs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from torch import Tensor, nn

from tests.viz._helpers import two_head_attention
from torchstn.errors import OptionError
from torchstn.modules import (
    ParallelSpatialTransformer,
)
from torchstn.viz import (
    EpochAnimator,
)


def test_epoch_animator_writes_a_looping_gif(st_cnn: nn.Module, images: Tensor, tmp_path: Path) -> None:
    anim = EpochAnimator(max_items=2, zoom=1)
    for epoch in range(3):
        anim.add(st_cnn, images, epoch)
    assert anim.num_frames == {"transformer": 3}
    [path] = anim.save(tmp_path / "st.gif", duration_ms=100)
    assert path == tmp_path / "st.gif"
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == 3  # type: ignore[attr-defined]
        assert gif.info["loop"] == 0
        assert gif.size == anim.frames["transformer"][0].size


def test_epoch_animator_one_gif_per_transformer(images: Tensor, tmp_path: Path) -> None:
    par = ParallelSpatialTransformer([two_head_attention(), two_head_attention()], combine="stack")
    anim = EpochAnimator(max_items=2, zoom=1)
    anim.add(par, images, 0)
    anim.add(par, images, 1)
    paths = anim.save(tmp_path / "run" / "st.gif")
    assert [p.name for p in paths] == ["st_transformers_0.gif", "st_transformers_1.gif"]
    for p in paths:
        with Image.open(p) as gif:
            assert gif.n_frames == 2  # type: ignore[attr-defined]
    with pytest.raises(OptionError, match="no frames"):
        EpochAnimator().save(tmp_path / "empty.gif")
