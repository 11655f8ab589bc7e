"""Docs are tests: every ```python block in README.md runs; where a ```text block follows it
directly, the block's printed output must equal that text (whitespace-normalised per line)."""
import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"```python\n(.*?)```\n(?:\s*```text\n(.*?)```)?", re.S)


def _blocks():
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(README.read_text())]


def _norm(text):
    return [" ".join(line.split()) for line in text.strip().splitlines() if line.strip()]


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_python_block(index, tmp_path, monkeypatch):
    code, expected = _blocks()[index]
    monkeypatch.chdir(tmp_path)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "__readme__"})
    if expected is not None:
        assert _norm(buf.getvalue()) == _norm(expected)


def test_readme_grid_size_matches_the_code():
    """The README's one-line description of the MLP grid names how many methods it runs; a method
    added to `qlabref.reproduce.METHODS` without updating the README fails here."""
    from qlabref import reproduce

    m = re.search(r"qlabref reproduce mnist-mlp\s+# the grid: every method \((\d+)\) x seeds 0-2", README.read_text())
    assert m is not None, "README lost its line describing `qlabref reproduce mnist-mlp`"
    assert int(m.group(1)) == len(reproduce.GRIDS["mnist-mlp"]["seeds"]) == len(reproduce.METHODS)
    assert all(s == (0, 1, 2) for s in reproduce.GRIDS["mnist-mlp"]["seeds"].values())
