"""The one atomic-write helper: unique temporaries, usual permissions, nothing left behind on error."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from torchstn._io import atomic_path, atomic_write_bytes, atomic_write_text, stale_temporaries


def test_atomic_write_replaces_the_target_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write_text(target, "one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_write_uses_the_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644


def test_an_error_mid_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "c.bin"
    target.write_bytes(b"old")

    def interrupted() -> None:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        interrupted()
    assert target.read_bytes() == b"old"
    assert stale_temporaries(tmp_path) == []


def test_temporary_names_are_unique_per_call(tmp_path: Path) -> None:
    target = tmp_path / "d.png"
    with atomic_path(target) as one, atomic_path(target) as two:
        assert one != two
        one.write_bytes(b"1")
        two.write_bytes(b"2")
    assert target.read_bytes() in (b"1", b"2")
    assert stale_temporaries(tmp_path) == []


def test_stale_temporaries_lists_what_an_interrupted_write_left(tmp_path: Path) -> None:
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"")
    (tmp_path / "keep.tmp").write_bytes(b"")
    assert [p.name for p in stale_temporaries(tmp_path)] == [".last.pt.abc123.tmp"]
