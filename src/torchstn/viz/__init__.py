"""Pictures: what the transformers learnt, sheets of samples, animations and training curves.

One package, one file per concern:

- :mod:`~torchstn.viz.capture`: record what every spatial transformer in a model did in one forward pass.
- :mod:`~torchstn.viz.draw`: sheets of samples with boxes, and each input with its sampling outline beside the
  transformer's outputs.
- :mod:`~torchstn.viz.animate`: one frame per epoch, as a looping GIF.
- :mod:`~torchstn.viz.curves`: training curves from the JSON-lines log.

The geometry the pictures show lives in the geometry layer, not here: :func:`grid_outline` (re-exported from
``torchstn.transforms._outline``) and :func:`attention_boxes` (from :mod:`torchstn.geometry`, which the training
metric uses without importing any drawing code). Every file is written atomically (:mod:`torchstn._io`).

Convention:
    :func:`grid_outline` returns pixel coordinates with pixel ``i``'s centre at ``i``, so the border of a 28x28
    image runs from -0.5 to 27.5; :func:`attention_boxes` returns boxes in the *edge* convention of the data sets'
    ``meta["boxes"]`` (the whole image is ``(0, 0, W, H)``), so they compare directly.

Typical use during training::

    anim = EpochAnimator()
    for epoch in range(epochs):
        ...
        anim.add(model, fixed_batch, epoch)
        save_transformer_pictures(model, fixed_batch, run_dir / "pictures", epoch=epoch)
    anim.save(run_dir / "transformers.gif")
    plot_curves(rows, run_dir / "curves.png")
"""

from torchstn.geometry import attention_boxes
from torchstn.transforms._outline import grid_outline
from torchstn.viz.animate import EpochAnimator
from torchstn.viz.capture import TransformerRecord, capture
from torchstn.viz.curves import plot_curves
from torchstn.viz.draw import (
    HEAD_COLOURS,
    control_point_pixels,
    draw_boxes,
    draw_record,
    save_sheet,
    save_transformer_pictures,
    sheet,
)

__all__ = [
    "HEAD_COLOURS",
    "EpochAnimator",
    "TransformerRecord",
    "attention_boxes",
    "capture",
    "control_point_pixels",
    "draw_boxes",
    "draw_record",
    "grid_outline",
    "plot_curves",
    "save_sheet",
    "save_transformer_pictures",
    "sheet",
]
