"""Every error torchstn raises is one of its own (``torchstn.errors``), which also subclass the builtins.

The test walks the source with ``ast`` and fails on ``raise <builtin exception>(...)`` (or a bare builtin class)
anywhere outside ``errors.py`` and ``_checks.py``. Two builtins stay allowed: ``SystemExit`` (a command line's
exit status and one-line message) and ``NotImplementedError`` (abstract methods).
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

import torchstn
from torchstn import errors

ROOT = Path(torchstn.__file__).parent

#: Builtins a module may still raise.
ALLOWED = {"SystemExit", "NotImplementedError"}

#: Where the family itself is defined and the declarative checks raise it.
EXEMPT = {"errors.py", "_checks.py"}

#: Files with bare builtin raises that are converted by the other branches; the lead removes these entries when
#: merging (a listed file that no longer raises a builtin fails the test, so the list cannot go stale).
PENDING = {}

BUILTIN_EXCEPTIONS = {
    name for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, BaseException)
}


def builtin_raises(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every ``raise`` of a builtin exception class (called or bare) in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if isinstance(target, ast.Name) and target.id in BUILTIN_EXCEPTIONS and target.id not in ALLOWED:
            found.append((node.lineno, target.id))
    return sorted(found)


def _sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).as_posix() not in EXEMPT)


def test_the_walker_finds_what_it_should() -> None:
    source = (
        "def f(x):\n"
        "    if x:\n"
        "        raise ValueError(f'x: bad {x}')\n"
        "    try:\n"
        "        pass\n"
        "    except OSError as err:\n"
        "        raise KeyError('k') from err\n"
        "    raise RuntimeError\n"
        "    raise SystemExit('bye')\n"
        "    raise NotImplementedError\n"
        "    raise errors.DataError('fine')\n"
        "    raise\n"
    )
    assert builtin_raises(source) == [(3, "ValueError"), (7, "KeyError"), (8, "RuntimeError")]


def test_no_bare_builtin_raise_outside_the_error_module() -> None:
    offenders = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel in PENDING:
            continue
        offenders += [f"{rel}:{line}: raise {name}" for line, name in builtin_raises(path.read_text())]
    assert offenders == [], "raise a torchstn.errors class instead:\n" + "\n".join(offenders)


def test_pending_files_exist_and_still_need_converting() -> None:
    stale = []
    for rel in sorted(PENDING):
        path = ROOT / rel
        if not path.exists() or not builtin_raises(path.read_text()):
            stale.append(rel)
    assert stale == [], f"remove these from PENDING (converted or gone): {stale}"


@pytest.mark.parametrize("name", sorted(errors.__all__))
def test_every_error_is_an_stn_error_and_a_builtin(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, errors.STNError)
    if cls is not errors.STNError:
        assert any(base.__module__ == "builtins" and base is not Exception for base in cls.__mro__[1:]), cls.__mro__
