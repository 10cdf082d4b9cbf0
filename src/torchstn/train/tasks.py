"""Tasks: where the data comes from, what the loss is, and how a model is scored.

Data sources serve batches by index from memory (``TensorSource``) or generate them on the fly
(``StreamSource``, for 3D volumes), so the training loop does no per-sample Python work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchstn._checks import check_choice
from torchstn.data import MNIST, DistortedMNIST, MNISTSplit, get_recipe, load_mnist
from torchstn.data.distort import Recipe
from torchstn.errors import ConfigError, ConfigKeyError

__all__ = [
    "ClassifyTask",
    "ColocTask",
    "DatasetSource",
    "SequenceTask",
    "Source",
    "StreamSource",
    "SubsetSource",
    "Task",
    "TensorSource",
    "box_iou",
    "build_task",
    "list_tasks",
    "register_task",
    "task_builder",
]


class Source(Protocol):
    """Samples addressed by index."""

    def __len__(self) -> int: ...

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """``(x float32, y)`` for sample indices ``(B,)``."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Prepare the epoch's samples (a redrawn dataset regenerates them)."""
        ...

    def prefetch(self, epoch: int) -> None:
        """Start preparing a later epoch's samples in the background (a redrawn dataset; else nothing)."""
        ...


class TensorSource:
    """A dataset held in memory: uint8 images (or float tensors) and targets (labels, or a metadata entry such as
    the co-localisation boxes when ``target`` names one)."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        dataset: DistortedMNIST | None = None,
        meta: dict[str, Tensor] | None = None,
        target: str = "labels",
    ) -> None:
        self.images, self.dataset, self.target = images, dataset, target
        self.meta = meta if meta is not None else (dataset.meta if dataset is not None else {})
        self.labels = labels if target == "labels" else self.meta[target]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        x = self.images[index]
        return (x.float().div_(255.0) if x.dtype == torch.uint8 else x), self.labels[index]

    def set_epoch(self, epoch: int) -> None:
        if self.dataset is not None and self.dataset.redraw:
            self.dataset.set_epoch(epoch)
            self.images, self.meta = self.dataset.images, self.dataset.meta
            self.labels = self.dataset.labels if self.target == "labels" else self.meta[self.target]

    def prefetch(self, epoch: int) -> None:
        if self.dataset is not None and self.dataset.redraw:
            self.dataset.prefetch(epoch)


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

    def prefetch(self, epoch: int) -> None:
        return None


class DatasetSource:
    """A map-style dataset read item by item (images decoded from disk as they are needed: CUB-200)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        items = [self.dataset[int(i)] for i in index]
        return torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])

    def set_epoch(self, epoch: int) -> None:
        return None

    def prefetch(self, epoch: int) -> None:
        return None


class SubsetSource:
    """The samples ``indices`` of another source, renumbered ``0 .. len(indices) - 1`` (a validation split).

    Args:
        source: The source the samples come from.
        indices: Their indices in ``source``, ``(N,)`` int64.
        owns_epoch: Whether :meth:`set_epoch` prepares ``source`` (false for a second view of the same source, so
            a redrawn dataset is regenerated once per epoch).
    """

    def __init__(self, source: Source, indices: Tensor, owns_epoch: bool = True) -> None:
        self.source, self.indices, self.owns_epoch = source, indices, owns_epoch

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.source.batch(self.indices[index])

    def set_epoch(self, epoch: int) -> None:
        if self.owns_epoch:
            self.source.set_epoch(epoch)

    def prefetch(self, epoch: int) -> None:
        if self.owns_epoch:
            self.source.prefetch(epoch)


@dataclass
class Task:
    """Loss and scoring; subclasses say how.

    The sources serve CPU tensors; the loop moves each batch to the model's device. Networks a task keeps (the
    co-localisation encoder) follow :meth:`to`.
    """

    train: Source
    test: Source

    def to(self, device: torch.device | str) -> Task:
        """Move the networks this task holds (any ``nn.Module`` attribute) to ``device``; return the task."""
        for name, value in vars(self).items():
            if isinstance(value, nn.Module):
                setattr(self, name, value.to(device))
        return self

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


class SequenceTask(Task):
    """SVHN digit sequences: five heads of 11 classes (10 = no digit); a sequence is right only if all are."""

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        from torchstn.models.svhn import sequence_loss

        logits = model(x)
        return sequence_loss(logits, y), (logits.argmax(-1) != y).any(-1).sum()

    @torch.no_grad()
    def errors(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        wrong: Tensor = (model(x).argmax(-1) != y).any(-1)
        return wrong.sum()


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of boxes ``(B, 4)`` ``(x0, y0, x1, y1)``, row by row: ``(B,)``.

    Example:
        >>> box_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 0, 3, 2]]))
        tensor([0.3333])
    """
    w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    inter = w * h
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area - inter).clamp_min(1e-12)


def _encoder_net() -> nn.Sequential:
    """The MNIST CNN whose activations ``e`` the co-localisation loss compares."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
    )


def train_encoder(digits: MNISTSplit, epochs: int, seed: int, keep_head: bool = False) -> nn.Module:
    """Train the encoder (with a classifier head) on plain MNIST digits; return it frozen, in eval mode.

    With ``keep_head`` the returned network ends with the 10-way classifier (its logits), otherwise with the
    128 features before it."""
    torch.manual_seed(seed)
    encoder, head = _encoder_net(), nn.Linear(128, 10)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-3)
    x_all, y_all = digits.images[:, None], digits.labels
    for epoch in range(epochs):
        order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(seed + epoch))
        for lo in range(0, len(digits), 256):
            idx = order[lo : lo + 256]
            loss = F.cross_entropy(head(encoder(x_all[idx])), y_all[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    net = nn.Sequential(encoder, head) if keep_head else encoder
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class ColocTask(Task):
    """Co-localisation (appendix): an attention ST trained only with the paper's hinge loss.

    For a batch of images of one class, with ``T(I)`` the transformer's crop and ``e`` a frozen MNIST encoder:
    ``max(0, |e(T(I_n)) - e(T(I_m))|^2 - |e(T(I_n)) - e(R(I_n))|^2 + margin)``, where ``I_m`` is another image
    of the batch and ``R(I_n)`` a random crop of ``I_n``. Scored by the fraction of test images whose crop box has
    IoU <= 0.5 with the true box (the error, in %).

    The loss is the paper's; three choices the paper leaves open decide whether it trains (see RESULTS.md and
    ``scripts/coloc_variants.py``, which measured each):

    * ``positive="detach"``: the gradient reaches each crop through its anchor terms only, not through its role
      as another image's positive. With ``"grad"`` a crop that catches the digit is pulled towards the other
      images' (mostly blank) crops, and from any start training collapses onto empty background.
    * ``pairs="all"``: every ordered pair ``(n, m != n)`` of the batch, rather than one ``m`` per anchor
      (``"one"``); an anchor then sees the few crops that already hold the digit.
    * ``negatives="crop"``: ``R(I_n)`` is a random crop of the output's size in pixels (28x28, the encoder's input)
      anywhere inside the image; ``"transformer"`` crops at the transformer's current scale instead.
    """

    def __init__(
        self,
        train: Source,
        test: Source,
        encoder: nn.Module,
        margin: float,
        image_size: int,
        *,
        positive: str = "detach",
        pairs: str = "all",
        negatives: str = "crop",
    ) -> None:
        super().__init__(train, test)
        self.encoder, self.margin, self.image_size = encoder, margin, image_size
        self.positive = check_choice(positive, "coloc.positive", ("detach", "grad"))
        self.pairs = check_choice(pairs, "coloc.pairs", ("all", "one"))
        self.negatives = check_choice(negatives, "coloc.negatives", ("crop", "transformer"))

    def _random_crops(self, x: Tensor, crops: Tensor, params: Tensor) -> Tensor:
        from torchstn.sampling import warp
        from torchstn.transforms import Attention

        if self.negatives == "crop":
            s = torch.full((len(x), 1), crops.shape[-1] / x.shape[-1], dtype=x.dtype, device=x.device)
        else:
            s = params[:, :1].detach()
        t = (torch.rand(len(x), 2, dtype=x.dtype, device=x.device) * 2 - 1) * (1 - s)  # windows inside the image
        return warp(x, torch.cat((s, t), -1), Attention(), crops.shape[-2:])

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        crops, params = model(x, return_params=True)
        e_n = self.encoder(crops)
        e_p = e_n.detach() if self.positive == "detach" else e_n
        d_an = (e_n - self.encoder(self._random_crops(x, crops, params))).square().sum(-1)
        if self.pairs == "all" and len(x) > 1:
            d_ap = (e_n[:, None] - e_p[None]).square().sum(-1)  # (N, N)
            off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
            hinge = F.relu(d_ap - d_an[:, None] + self.margin)[off]
        else:
            d_ap = (e_n - e_p.roll(1, dims=0)).square().sum(-1)
            hinge = F.relu(d_ap - d_an + self.margin)
        return hinge.mean(), self._misses(params.detach(), y)

    def _misses(self, params: Tensor, boxes: Tensor) -> Tensor:
        from torchstn.geometry import attention_boxes

        pred = attention_boxes(params, (self.image_size, self.image_size))
        return (box_iou(pred, boxes.to(pred.dtype)) <= 0.5).sum()

    @torch.no_grad()
    def errors(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        _, params = model(x, return_params=True)
        return self._misses(params, y)


# --- the task registry ----------------------------------------------------------------------------------------

TaskBuilder = Callable[[dict[str, Any]], Task]
_TASKS: dict[str, TaskBuilder] = {}


def register_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    """Register a builder ``config -> Task`` under ``name`` (the config's ``task`` key), as models are registered.

    Raises:
        ConfigError: ``name`` is already registered.
    """

    def decorate(fn: TaskBuilder) -> TaskBuilder:
        if name in _TASKS:
            raise ConfigError(f"task {name!r} is already registered")
        _TASKS[name] = fn
        return fn

    return decorate


def list_tasks() -> list[str]:
    """The registered task names, sorted."""
    return sorted(_TASKS)


def build_task(config: dict[str, Any]) -> Task:
    """The task a config describes, with its data loaded.

    Raises:
        ConfigKeyError: ``task`` names no registered task.
        ConfigError: The task does not take ``data.dataset``, or a key it needs is missing.
    """
    return task_builder(config["task"])(config)


def task_builder(name: str) -> TaskBuilder:
    """The builder registered under ``name``.

    Raises:
        ConfigKeyError: No task is registered under ``name``.
    """
    if name not in _TASKS:
        raise ConfigKeyError(f"task: unknown task {name!r}; registered: {', '.join(list_tasks())}")
    return _TASKS[name]


def _require_dataset(config: dict[str, Any], task: str, allowed: tuple[str, ...]) -> str:
    dataset = config["data"]["dataset"]
    if dataset not in allowed:
        raise ConfigError(f"data.dataset: task {task!r} takes {' or '.join(allowed)}, got {dataset!r}")
    if dataset in ("svhn", "cub") and not config["data"]["root"]:
        raise ConfigError(f"data.root: the {dataset} directory is required (it cannot be downloaded here)")
    return str(dataset)


def _mnist_sources(config: dict[str, Any]) -> tuple[Source, Source, MNIST]:
    """The distorted-MNIST train and test sources, and the MNIST digits they were drawn from."""
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
            mnist,
        )
    common = {"seed": data["seed"], "mnist": mnist, "cache_dir": data["cache_dir"]}
    train = DistortedMNIST(recipe, data["train_split"], n=data["n_train"], redraw=data["redraw"], **common)
    test = DistortedMNIST(recipe, data["test_split"], n=data["n_test"], **common)
    return (
        TensorSource(train.images, train.labels, train),
        TensorSource(test.images, test.labels, meta=test.meta),
        mnist,
    )


def _cub_task(config: dict[str, Any]) -> Task:
    from torchstn.data.cub import CUB200

    data = config["data"]
    size = data["size"] or 448
    gen = torch.Generator().manual_seed(config["train"]["seed"])
    train = CUB200(data["root"], "train", size, generator=gen)
    test = CUB200(data["root"], "test", size)
    return ClassifyTask(DatasetSource(train), DatasetSource(test))


@register_task("classify")
def _classify(config: dict[str, Any]) -> Task:
    """Classification of distorted MNIST (Table 1, addition, 3D) or CUB-200 (section 4)."""
    if _require_dataset(config, "classify", ("distorted_mnist", "cub")) == "cub":
        return _cub_task(config)
    train, test, _ = _mnist_sources(config)
    return ClassifyTask(train, test)


@register_task("sequence")
def _sequence(config: dict[str, Any]) -> Task:
    """Digit sequences: SVHN (section 4), or a distorted-MNIST recipe with sequence labels (``text_strips``)."""
    from torchstn.data.svhn import preprocess_svhn_split

    if _require_dataset(config, "sequence", ("svhn", "distorted_mnist")) == "distorted_mnist":
        data = config["data"]
        if not get_recipe(data["recipe"], **data["recipe_params"]).label_shape:
            raise ConfigError(
                f"data.recipe: task 'sequence' takes svhn, or distorted_mnist with a recipe of digit sequences "
                f"(text_strips), got {data['recipe']!r}"
            )
        train, test, _ = _mnist_sources(config)
        return SequenceTask(train, test)
    data = config["data"]
    size = data["size"] or 64
    sets = [preprocess_svhn_split(data["root"], split, size) for split in (data["train_split"], data["test_split"])]
    return SequenceTask(*(TensorSource(t.images, t.labels) for t in sets))


@register_task("coloc")
def _coloc(config: dict[str, Any]) -> Task:
    """Co-localisation (appendix): the encoder is trained on the same MNIST digits the images were drawn from."""
    _require_dataset(config, "coloc", ("distorted_mnist",))
    train, test, mnist = _mnist_sources(config)
    if not (isinstance(train, TensorSource) and isinstance(test, TensorSource)) or "boxes" not in train.meta:
        raise ConfigError("task: 'coloc' needs the materialised colocalisation recipe (data.stream=False)")
    train = TensorSource(train.images, train.labels, train.dataset, train.meta, target="boxes")
    test = TensorSource(test.images, test.labels, None, test.meta, target="boxes")
    c = config["coloc"]
    # The encoder is the same for every run (seed 0); forking the global generator around its training keeps
    # the model's initial weights, drawn next by the engine, a function of train.seed.
    with torch.random.fork_rng(devices=[]):
        encoder = train_encoder(mnist.split(config["data"]["train_split"]), c["encoder_epochs"], 0)
    return ColocTask(
        train,
        test,
        encoder,
        c["margin"],
        int(train.images.shape[-1]),
        positive=c["positive"],
        pairs=c["pairs"],
        negatives=c["negatives"],
    )
