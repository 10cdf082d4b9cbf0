"""The optional compiled kernel: fused affine and projective warps for the CPU.

``F.affine_grid`` + ``F.grid_sample`` writes a ``(B, H', W', 2)`` grid and reads it back. The kernel in
``csrc/matrix_warp.cpp`` computes each output pixel's source point from the ``(B, 2, 3)`` or ``(B, 3, 3)`` matrix
where it is needed and samples it bilinearly, forward and backward (input and matrix gradients), so the grid
never exists. Its arithmetic follows ATen's sampler step by step and agrees with it to rounding (the tests compare
them in float64). :func:`torchstn.warp` and the modules use it on their own (``backend="auto"``) for a 2D matrix
transform (:class:`~torchstn.transforms.Affine`, ``Attention``, ``Similarity``, ``Translation``, ``Projective``)
with bilinear sampling and any padding, on the CPU, in float32 or float64, once the kernel is built; everything
else (other devices and dtypes, graphs being compiled or exported) takes the ``F.grid_sample`` path.
``csrc/separable_filter.cpp`` adds the per-image separable filter of the anti-aliasing prefilter for affine warps
(``warp(..., antialias=True)``, :mod:`torchstn._antialias`), forward and backward, and ``csrc/axis_resample.cpp``
that prefilter and the sample in one pass for axis-aligned warps (``Attention``, ``Translation``).
``csrc/single_channel_conv.cpp`` is the one-channel first convolution of the MNIST classifiers
(:class:`torchstn.models.SingleChannelConv2d`), forward and backward, and ``csrc/max_pool2x2.cpp`` their 2x2 max
pooling (:class:`torchstn.models.MaxPool2x2`).

The kernel is compiled on the machine that runs it (a C++ compiler, ninja and setuptools are needed: the ``ext``
extra installs ninja, torch brings setuptools), once per torch version, source and CPU, and cached (see
:func:`cache_root`: inside the virtual environment when there is one, ``$TORCHSTN_EXT_DIR`` to choose)::

    python -m torchstn.ext build     # compile (about 30 s) and load
    python -m torchstn.ext status    # where the build lives and whether it loads

Nothing is compiled implicitly: until it is built, ``backend="auto"`` keeps using ``F.grid_sample``. Set
``TORCHSTN_EXT=0`` to ignore a build. It supports first-order gradients only; pass ``backend="reference"`` for
second-order ones.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from torchstn.errors import ExtensionBuildError

__all__ = ["ExtensionBuildError", "available", "build", "build_dir", "cache_root", "load"]

_NAME = "torchstn_ext"
_SOURCES = tuple(
    Path(__file__).parent / "csrc" / name
    for name in (
        "matrix_warp.cpp",
        "separable_filter.cpp",
        "axis_resample.cpp",
        "single_channel_conv.cpp",
        "max_pool2x2.cpp",
    )
)
_HEADERS = (Path(__file__).parent / "csrc" / "grid_math.h",)  # included by the sources: part of the build's key
# -fno-trapping-math lets the compiler vectorise floor(); -march=native is safe because the build is keyed by the
# CPU it was made on (see build_dir).
_CFLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fopenmp")
_LDFLAGS = ("-fopenmp",)

_loaded: bool | None = None  # None: not tried yet in this process


def _cpu_signature() -> str:
    """The CPU's model and feature flags (Linux), so a build for one CPU is never loaded on another."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def cache_root() -> Path:
    """Where builds are kept: ``$TORCHSTN_EXT_DIR`` if set; else, inside a virtual environment, the environment's
    own ``var/cache/torchstn-ext`` (the build lives and dies with the environment and its torch); else
    ``$XDG_CACHE_HOME/torchstn/ext`` (default ``~/.cache/torchstn/ext``)."""
    if os.environ.get("TORCHSTN_EXT_DIR"):
        return Path(os.environ["TORCHSTN_EXT_DIR"])
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "var" / "cache" / "torchstn-ext"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torchstn" / "ext"


def build_dir() -> Path:
    """The directory of this build: ``cache_root()/<key>``, the key hashing the sources, the flags, torch's and
    Python's versions and the CPU."""
    root = cache_root()
    h = hashlib.sha256()
    for src in (*_SOURCES, *_HEADERS):
        h.update(src.read_bytes())
    for part in (*_CFLAGS, *_LDFLAGS, torch.__version__, sys.version, platform.machine(), _cpu_signature()):
        h.update(part.encode())
    return root / f"{_NAME}-{h.hexdigest()[:16]}"


def _library(directory: Path) -> Path:
    return directory / f"{_NAME}.so"


def _disabled() -> bool:
    return os.environ.get("TORCHSTN_EXT", "1").strip().lower() in ("0", "false", "off", "no")


def load(*, build: bool = False, verbose: bool = False) -> bool:
    """Load the kernel into this process; with ``build``, compile it first if there is no build yet.

    Returns:
        Whether ``torch.ops.torchstn.warp_bilinear`` is now available. ``False`` when there is no build (and
        ``build`` is false) or ``TORCHSTN_EXT=0``.

    Raises:
        ExtensionBuildError: ``build`` was asked for and compiling failed, or an existing build failed to load.
    """
    global _loaded
    if _disabled():
        return False
    if _loaded:
        return True
    directory = build_dir()
    lib = _library(directory)
    if not lib.exists():
        if not build:
            _loaded = False
            return False
        _compile(directory, verbose)
    try:
        torch.ops.load_library(str(lib))  # type: ignore[no-untyped-call]
    except (OSError, RuntimeError) as err:
        raise ExtensionBuildError(f"could not load {lib}: {err} (rebuild with `python -m torchstn.ext build`)") from err
    _loaded = True
    return True


def _compile(directory: Path, verbose: bool) -> None:
    """Compile in a child process (loading the library there, not here, so this process loads it once, from its
    final place) into a fresh directory beside ``directory``, then move it into place: a build interrupted half-way
    (or two processes building at once) never leaves a broken library where :func:`load` looks."""
    # ninja from PyPI (the 'ext' extra) lives beside this interpreter, which need not be on PATH (a virtual
    # environment used without activating it): put it first for the build.
    env = {**os.environ, "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))}
    if shutil.which("ninja", path=env["PATH"]) is None:
        raise ExtensionBuildError("building the kernel needs ninja: pip install ninja (the 'ext' extra)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
    script = (
        "import sys; from torch.utils import cpp_extension; "
        f"cpp_extension.load(name={_NAME!r}, sources={[str(s) for s in _SOURCES]!r}, build_directory=sys.argv[1], "
        f"extra_cflags={list(_CFLAGS)!r}, extra_ldflags={list(_LDFLAGS)!r}, is_python_module=False, "
        f"verbose={verbose!r})"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp)], capture_output=not verbose, text=True, check=False, env=env
        )
        if done.returncode != 0:
            tail = "\n".join((done.stderr or "").strip().splitlines()[-30:])
            raise ExtensionBuildError(f"building the kernel failed (exit {done.returncode}):\n{tail}")
        try:
            tmp.rename(directory)
        except OSError:
            if not _library(directory).exists():  # not another process's finished build: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def available() -> bool:
    """Whether the kernel is loaded or can be loaded from an existing build (never compiles)."""
    global _loaded
    if _loaded is None:
        try:
            return load()
        except ExtensionBuildError as err:  # a build that does not load: say so once, then use the grid path
            warnings.warn(f"torchstn: {err}; warping on the grid path instead", RuntimeWarning, stacklevel=2)
            _loaded = False
    return bool(_loaded) and not _disabled()


def build(verbose: bool = False) -> Path:
    """Compile the kernel if needed and load it; returns the library's path."""
    load(build=True, verbose=verbose)
    return _library(build_dir())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchstn.ext", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "status"), help="compile and load, or report the build")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")
    args = parser.parse_args(argv)
    if args.command == "build":
        try:
            path = build(verbose=args.verbose)
        except ExtensionBuildError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"built and loaded {path}")
        return 0
    lib = _library(build_dir())
    state = "disabled by TORCHSTN_EXT" if _disabled() else ("loads" if available() else "not built")
    print(f"{lib}: {state}")
    return 0 if available() else 1


if __name__ == "__main__":
    raise SystemExit(main())
