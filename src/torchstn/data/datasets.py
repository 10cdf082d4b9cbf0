"""Distorted datasets as tensors and ``torch.utils.data`` datasets, with a checksummed on-disk cache.

A materialised dataset is an ``.npz`` (arrays only, loaded with ``allow_pickle=False``) beside a JSON manifest
that records the recipe, seed, split, size, cache format version, a fingerprint of the MNIST source and the
SHA-256 of the ``.npz``. A cache whose manifest does not match the request, or whose bytes do not match the
checksum, is rebuilt, never used. Both files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from torchstn._checks import check_bool, check_instance, check_int, check_positive_int
from torchstn._io import atomic_write, atomic_write_text
from torchstn.data.distort import Batch, Recipe, get_recipe
from torchstn.data.mnist import MNIST, MNISTSplit, load_mnist
from torchstn.errors import DataError, DTypeError, ShapeError

__all__ = ["CACHE_VERSION", "DistortedMNIST", "default_cache_dir", "generate", "materialise"]

#: Bump when generation changes so old caches are rebuilt.
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$TORCHSTN_CACHE`` if set, else ``~/.cache/torchstn``."""
    return Path(os.environ.get("TORCHSTN_CACHE", Path.home() / ".cache" / "torchstn"))


def _stream(split: str, epoch: int | None) -> str:
    return split if epoch is None else f"{split}/epoch{epoch}"


def generate(
    recipe: Recipe,
    source: MNISTSplit,
    n: int,
    seed: int,
    split: str,
    epoch: int | None = None,
    start: int = 0,
    batch_size: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> Batch:
    """Generate samples ``start .. start + n - 1`` of a split, in batches; the result does not depend on
    ``batch_size``. ``epoch`` (None for a fixed set) selects an independent redraw of the distortions.

    Example:
        >>> from torchstn.data.distort import Rotated
        >>> src = MNISTSplit(torch.rand(5, 28, 28), torch.arange(5))
        >>> a = generate(Rotated(), src, 5, seed=0, split="train", batch_size=2)
        >>> torch.equal(a.images, generate(Rotated(), src, 5, seed=0, split="train", batch_size=5).images)
        True
    """
    check_instance(recipe, "recipe", Recipe, "a torchstn.data.Recipe")
    check_instance(source, "source", MNISTSplit, "a torchstn.data.MNISTSplit")
    if len(source) == 0:
        raise ShapeError("source: expected at least one digit, got an empty split")
    check_positive_int(n, "n")
    check_int(seed, "seed")
    check_instance(split, "split", str, "a str")
    if epoch is not None:
        check_int(epoch, "epoch", minimum=0)
    check_int(start, "start", minimum=0)
    check_positive_int(batch_size, "batch_size")
    parts: list[Batch] = []
    for lo in range(start, start + n, batch_size):
        index = torch.arange(lo, min(lo + batch_size, start + n))
        parts.append(recipe.generate(source, index, seed, _stream(split, epoch)))
        if progress is not None:
            progress(len(index))
    meta = {k: torch.cat([p.meta[k] for p in parts]) for k in parts[0].meta}
    return Batch(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]), meta)


def _fingerprint(source: MNISTSplit) -> str:
    h = hashlib.sha256()
    h.update(source.images.numpy().tobytes())
    h.update(source.labels.numpy().tobytes())
    return h.hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(batch: Batch, probes: dict[int, Batch], recipe: Recipe, n: int) -> str | None:
    """Why the cached ``batch`` is not what ``recipe`` generates (None if it is).

    ``probes`` maps a few indices to freshly generated samples (generation is deterministic per index): they give
    the keys, dtypes and per-sample shapes to expect, and the exact values at those indices.
    """
    probe = next(iter(probes.values()))
    want_images = (n, *recipe.shape())
    if batch.images.dtype != torch.uint8 or tuple(batch.images.shape) != want_images:
        return f"images are {batch.images.dtype} {tuple(batch.images.shape)}, expected torch.uint8 {want_images}"
    if batch.labels.dtype != probe.labels.dtype or tuple(batch.labels.shape) != (n, *probe.labels.shape[1:]):
        return f"labels are {batch.labels.dtype} {tuple(batch.labels.shape)}, expected {probe.labels.dtype} ({n},)"
    if n and (int(batch.labels.min()) < 0 or int(batch.labels.max()) >= recipe.num_classes):
        return f"labels span {int(batch.labels.min())}..{int(batch.labels.max())}, not 0..{recipe.num_classes - 1}"
    if sorted(batch.meta) != sorted(probe.meta):
        return f"meta keys are {sorted(batch.meta)}, expected {sorted(probe.meta)}"
    for k, v in probe.meta.items():
        got = batch.meta[k]
        if got.dtype != v.dtype or tuple(got.shape) != (n, *v.shape[1:]):
            return f"meta[{k!r}] is {got.dtype} {tuple(got.shape)}, expected {v.dtype} {(n, *v.shape[1:])}"
    for i, p in probes.items():
        same = torch.equal(batch.images[i], p.images[0]) and torch.equal(batch.labels[i], p.labels[0])
        if not same or not all(torch.equal(batch.meta[k][i], v[0]) for k, v in p.meta.items()):
            return f"sample {i} differs from what the recipe generates"
    return None


def _load_cached(
    npz: Path, manifest: Path, expected: dict[str, object], check: Callable[[Batch], str | None]
) -> Batch | None:
    """The cached batch if the manifest matches ``expected``, the checksum matches the bytes and ``check`` finds
    nothing wrong with the contents; else None (the caller rebuilds). Never raises on a damaged cache."""
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or recorded.get("request") != expected or not npz.is_file():
        return None
    try:
        if _sha256(npz) != recorded.get("sha256"):
            return None
        loaded = np.load(npz, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy under the cache's name
            return None
        with loaded as f:
            if not {"images", "labels"} <= set(f.files):
                return None
            arrays = {k: torch.from_numpy(np.ascontiguousarray(f[k])) for k in f.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
        return None  # unreadable: a truncated or damaged archive, a bad member, an object array
    meta = {k[5:]: v for k, v in arrays.items() if k.startswith("meta_")}
    if set(arrays) != {"images", "labels", *(f"meta_{k}" for k in meta)}:
        return None
    batch = Batch(arrays["images"], arrays["labels"], meta)
    return batch if check(batch) is None else None


def materialise(
    recipe: Recipe,
    source: MNISTSplit,
    split: str,
    n: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> tuple[Batch, Path]:
    """A fixed distorted split, from the cache when a valid one exists, else generated and cached.

    Args:
        recipe: What to generate.
        source: The MNIST split it distorts.
        split: Name of the split (part of the random stream, so train and test draw independently).
        n: Number of samples (default: one per source digit).
        seed: Dataset seed.
        cache_dir: Where caches live (default :func:`default_cache_dir`).
        batch_size: Generation batch size (does not change the result).
        progress: Called with the number of samples after each batch.

    Returns:
        The samples and the path of the ``.npz``.

    Raises:
        DataError: No valid cache exists and one cannot be written in ``cache_dir``.

    A cache is used only if its manifest matches the request, its bytes match the recorded checksum, and its
    contents match the recipe: the sample count, the image shape and dtype, the labels' dtype and range, the
    metadata keys, dtypes and shapes, and the first and last samples regenerated exactly. Anything else
    (including a missing array or a damaged archive) is rebuilt.
    """
    check_instance(recipe, "recipe", Recipe, "a torchstn.data.Recipe")
    check_instance(split, "split", str, "a str")
    n = len(source) if n is None else check_positive_int(n, "n")
    seed = check_int(seed, "seed")
    batch_size = check_positive_int(batch_size, "batch_size")
    request: dict[str, object] = {
        "version": CACHE_VERSION,
        "recipe": recipe.config(),
        "split": split,
        "n": n,
        "seed": int(seed),
        "source": _fingerprint(source),
    }
    key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    npz, manifest = root / f"{recipe.name}-{split}-{key}.npz", root / f"{recipe.name}-{split}-{key}.json"
    probes = {i: generate(recipe, source, 1, seed, split, start=i) for i in sorted({0, n - 1})}
    cached = _load_cached(npz, manifest, json.loads(json.dumps(request)), lambda b: _mismatch(b, probes, recipe, n))
    if cached is not None:
        return cached, npz
    batch = generate(recipe, source, n, seed, split, batch_size=batch_size, progress=progress)
    arrays = {"images": batch.images.numpy(), "labels": batch.labels.numpy()}
    arrays.update({f"meta_{k}": v.numpy() for k, v in batch.meta.items()})

    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]

    try:
        atomic_write(npz, write_npz)
        record = {"request": request, "sha256": _sha256(npz), "file": npz.name}
        atomic_write_text(manifest, json.dumps(record, indent=1, sort_keys=True))
    except OSError as err:
        raise DataError(f"{npz}: cannot write the cache there ({err}); pass another cache_dir") from err
    return batch, npz


class _Prefetch:
    """One epoch's samples generated by a daemon thread (it never holds up the interpreter's exit); the thread's
    exception, if any, is raised by :meth:`result`."""

    def __init__(self, epoch: int, make: Callable[[], Batch]) -> None:
        self.epoch = epoch
        self._batch: Batch | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(make,), name=f"torchstn-prefetch-{epoch}", daemon=True)
        self._thread.start()

    def _run(self, make: Callable[[], Batch]) -> None:
        try:
            self._batch = make()
        except BaseException as err:  # re-raised in the thread that asks for the samples
            self._error = err

    def result(self) -> Batch:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._batch is not None
        return self._batch


class DistortedMNIST(Dataset[tuple[Tensor, Tensor]]):
    """A distorted MNIST split as a ``torch.utils.data.Dataset`` and as whole tensors.

    Args:
        recipe: A :class:`~torchstn.data.distort.Recipe` or its name (``"rts"``, ``"r"``, ...).
        split: ``"train"``, ``"valid"``, ``"test"`` or ``"train+valid"`` (the MNIST split it distorts).
        seed: Dataset seed.
        n: Number of samples (default: one per source digit).
        redraw: Draw fresh distortions each epoch (call :meth:`set_epoch`) instead of one fixed set; the paper
            used a fixed set. A redrawn dataset lives in memory and is not cached.
        cache: Cache fixed sets on disk (see :func:`materialise`).
        cache_dir: Cache directory.
        mnist: Loaded MNIST (default: :func:`~torchstn.data.mnist.load_mnist`).
        transform: Applied to each image in :meth:`__getitem__` (torchvision style), e.g. a normalisation; it
            receives the float32 ``(C, H, W)`` image in [0, 1]. Not applied by :meth:`tensors` or :attr:`images`.
        target_transform: Applied to each label (an int64 scalar tensor) in :meth:`__getitem__`.

    Items are ``(image float32 (C, H, W) in [0, 1], label int64)``, or what the transforms make of them.
    """

    def __init__(
        self,
        recipe: Recipe | str,
        split: str = "train",
        *,
        seed: int = 0,
        n: int | None = None,
        redraw: bool = False,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        mnist: MNIST | None = None,
        batch_size: int = 4096,
        transform: Callable[[Tensor], Tensor] | None = None,
        target_transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        check_instance(recipe, "recipe", (Recipe, str), "a torchstn.data.Recipe or a recipe name")
        check_bool(redraw, "redraw")
        check_bool(cache, "cache")
        for name, fn in (("transform", transform), ("target_transform", target_transform)):
            if fn is not None and not callable(fn):
                raise DTypeError(f"{name}: expected a callable or None, got {type(fn).__name__}")
        self.transform = transform
        self.target_transform = target_transform
        self.recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
        self.split = split
        self.seed = seed
        self.redraw = redraw
        self.source = (mnist or load_mnist()).split(split)
        self.n = len(self.source) if n is None else check_positive_int(n, "n")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.path: Path | None = None
        self.epoch: int | None = None
        self._pending: _Prefetch | None = None
        if redraw:
            self.set_epoch(0)
        elif cache:
            self.data, self.path = materialise(self.recipe, self.source, split, self.n, seed, cache_dir, batch_size)
        else:
            self.data = generate(self.recipe, self.source, self.n, seed, split, batch_size=batch_size)

    def set_epoch(self, epoch: int) -> None:
        """With ``redraw=True``, regenerate the distortions for ``epoch`` (a no-op for fixed sets); the samples
        :meth:`prefetch` is generating for ``epoch`` are waited for and taken instead."""
        check_int(epoch, "epoch", minimum=0)
        if self.redraw and epoch != self.epoch:
            pending, self._pending = self._pending, None
            if pending is not None and pending.epoch == epoch:
                self.data = pending.result()
            else:
                self.data = self._generate(epoch)
            self.epoch = epoch

    def prefetch(self, epoch: int) -> None:
        """With ``redraw=True``, start generating ``epoch``'s distortions in a background thread, so that
        :meth:`set_epoch` finds them ready: the next epoch's samples are drawn while this one trains (torch's
        operators release the GIL). They are the samples :meth:`set_epoch` would draw itself (they depend on the
        seed, the split, the epoch and the index only), so prefetching never changes a run. A no-op for fixed sets
        and for the epoch already drawn or being drawn."""
        check_int(epoch, "epoch", minimum=0)
        if not self.redraw or epoch == self.epoch or (self._pending is not None and self._pending.epoch == epoch):
            return
        self._pending = _Prefetch(epoch, lambda: self._generate(epoch))

    def _generate(self, epoch: int) -> Batch:
        return generate(self.recipe, self.source, self.n, self.seed, self.split, epoch, 0, self.batch_size)

    @property
    def images(self) -> Tensor:
        """``(N, C, H, W)`` uint8."""
        return self.data.images

    @property
    def labels(self) -> Tensor:
        """``(N,)`` int64."""
        return self.data.labels

    @property
    def meta(self) -> dict[str, Tensor]:
        """What was drawn per sample (angles, boxes, matrices, ...)."""
        return self.data.meta

    def tensors(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """All images as float32 in [0, 1] and labels, on ``device``: for fast in-memory training."""
        return self.images.to(device).float().div_(255.0), self.labels.to(device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, label = self.images[i].float() / 255.0, self.labels[i]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label
