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
