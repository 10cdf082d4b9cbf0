"""The documentation's Python code blocks run: every ```python block of README.md and docs/**/*.md.

Each file's blocks run in order in one namespace (a later block may use names an earlier one defined), in a
temporary working directory, so that snippets writing files leave nothing behind. A block preceded by the HTML
comment ``<!-- skip-test -->`` is not run: only for what truly cannot run here (a GPU), and the page says why.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
_BLOCK = re.compile(r"(?P<skip><!--\s*skip-test\s*-->\s*\n)?^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(line number, code, skipped)`` of every ```python block in a Markdown text, in order."""
    return [
        (text.count("\n", 0, m.start("code")) + 1, m.group("code"), m.group("skip") is not None)
        for m in _BLOCK.finditer(text)
    ]


def test_the_block_extractor_finds_blocks_and_opt_outs() -> None:
    text = "x\n```python\na = 1\n```\n\n<!-- skip-test -->\n```python\nb = 2\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(3, "a = 1\n", False), (8, "b = 2\n", True)]


def test_every_page_with_code_is_collected() -> None:
    with_code = [p.relative_to(ROOT).as_posix() for p in PAGES if python_blocks(p.read_text(encoding="utf-8"))]
    assert "README.md" in with_code and any(p.startswith("docs/guide") for p in with_code)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_python_blocks_of_a_page_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip("no python blocks")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCHSTN_CACHE", os.fspath(tmp_path / "cache"))
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for line, code, skipped in blocks:
        if skipped:
            continue
        try:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{page.relative_to(ROOT)}, the block at line {line} fails: {err!r}") from err


def test_the_coordinate_picture_script_draws_its_picture(tmp_path: Path) -> None:
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("docs_coordinates", ROOT / "docs" / "guide" / "coordinates.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(tmp_path / "coordinates.png")
    with Image.open(out) as made, Image.open(ROOT / "docs" / "guide" / "coordinates.png") as committed:
        assert made.size == committed.size  # the committed picture is this script's
