"""DDP's averaged gradient over shards equals the single-process gradient on the same global batch."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchstn.models import create_model
from torchstn.train.engine import shard
from torchstn.train.tasks import ClassifyTask, TensorSource


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(12, 1, 28, 28, generator=g), torch.randint(0, 10, (12,), generator=g)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("st_fcn_aff")
    with torch.no_grad():  # move the head off zero so the localisation network gets a gradient too
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.01)
    return model


def _worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    x, y = _batch()
    index = shard(torch.arange(12), rank, world)
    task = ClassifyTask(TensorSource(x, y), TensorSource(x, y))
    loss, _ = task.loss(model, x[index], y[index])
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.module.named_parameters()}, out)
    dist.destroy_process_group()


def test_ddp_gradient_equals_single_process_gradient() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{Path(tmp) / 'rendezvous'}"
        out = os.path.join(tmp, "grads.pt")
        mp.spawn(_worker, args=(2, init, out), nprocs=2, join=True)
        ddp = torch.load(out, weights_only=True)
    model = _model()
    x, y = _batch()
    loss, _ = ClassifyTask(TensorSource(x, y), TensorSource(x, y)).loss(model, x, y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(ddp[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)
