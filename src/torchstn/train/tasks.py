"""Tasks: where the data comes from, what the loss is, and how a model is scored.

Data sources serve batches by index from memory (``TensorSource``) or generate them on the fly
(``StreamSource``, for 3D volumes), so the training loop does no per-sample Python work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchstn.data import DistortedMNIST, MNISTSplit, get_recipe, load_mnist
from torchstn.data.distort import Recipe

__all__ = ["ClassifyTask", "Source", "StreamSource", "Task", "TensorSource", "build_task"]


class Source(Protocol):
    """Samples addressed by index."""

    def __len__(self) -> int: ...

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """``(x float32, y)`` for sample indices ``(B,)``."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Prepare the epoch's samples (a redrawn dataset regenerates them)."""
        ...


class TensorSource:
    """A dataset held in memory as uint8 images (or float tensors) and labels."""

    def __init__(self, images: Tensor, labels: Tensor, dataset: DistortedMNIST | None = None) -> None:
        self.images, self.labels, self.dataset = images, labels, dataset

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        x = self.images[index]
        return (x.float().div_(255.0) if x.dtype == torch.uint8 else x), self.labels[index]

    def set_epoch(self, epoch: int) -> None:
        if self.dataset is not None and self.dataset.redraw:
            self.dataset.set_epoch(epoch)
            self.images, self.labels = self.dataset.images, self.dataset.labels


class StreamSource:
    """Samples generated on demand from a recipe (nothing materialised): sample ``i`` is still fixed by the seed."""

    def __init__(self, recipe: Recipe, source: MNISTSplit, n: int, seed: int, split: str) -> None:
        self.recipe, self.source, self.n, self.seed, self.split = recipe, source, n, seed, split

    def __len__(self) -> int:
        return self.n

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        b = self.recipe.generate(self.source, index, self.seed, self.split)
        return b.images.float().div_(255.0), b.labels

    def set_epoch(self, epoch: int) -> None:
        return None


@dataclass
class Task:
    """Loss and scoring; subclasses say how."""

    train: Source
    test: Source

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean loss over the batch and the number of errors in it."""
        raise NotImplementedError

    @torch.no_grad()
    def errors(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Number of misclassified samples in a batch (a 0-dim tensor)."""
        raise NotImplementedError


class ClassifyTask(Task):
    """Softmax classification: cross-entropy loss, error rate."""

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y), (logits.argmax(-1) != y).sum()

    @torch.no_grad()
    def errors(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        wrong: Tensor = model(x).argmax(-1) != y
        return wrong.sum()


def _mnist_sources(config: dict[str, Any]) -> tuple[Source, Source]:
    data = config["data"]
    recipe = get_recipe(data["recipe"], **data["recipe_params"])
    mnist = load_mnist(data["mnist"])
    if data["stream"]:
        train_src, test_src = mnist.split(data["train_split"]), mnist.split(data["test_split"])
        n_train = data["n_train"] or len(train_src)
        n_test = data["n_test"] or len(test_src)
        return (
            StreamSource(recipe, train_src, n_train, data["seed"], data["train_split"]),
            StreamSource(recipe, test_src, n_test, data["seed"], data["test_split"]),
        )
    common = {"seed": data["seed"], "mnist": mnist, "cache_dir": data["cache_dir"]}
    train = DistortedMNIST(recipe, data["train_split"], n=data["n_train"], redraw=data["redraw"], **common)
    test = DistortedMNIST(recipe, data["test_split"], n=data["n_test"], **common)
    return TensorSource(train.images, train.labels, train), TensorSource(test.images, test.labels)


def build_task(config: dict[str, Any]) -> Task:
    """The task a config describes, with its data loaded."""
    kind, dataset = config["task"], config["data"]["dataset"]
    if dataset != "distorted_mnist":
        raise ValueError(f"data.dataset: {dataset!r} is not supported by this command yet")
    train, test = _mnist_sources(config)
    if kind == "classify":
        return ClassifyTask(train, test)
    raise ValueError(f"task: expected 'classify', got {kind!r}")
