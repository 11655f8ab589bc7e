"""Docs are tests: every ```python block in README.md and in every Markdown guide under demos/ (and the results
report demos/results/README.md) runs; where a ```text block follows it directly, the block's printed output must
equal that text (whitespace-normalised per line). A block that imports torch gets the `torch` marker and the
`torch` fixture (skipped without torch, a failure under QLABREF_REQUIRE_TORCH=1). Also: every guide is listed
in demos/README.md, every relative link in these documents points to a file that exists, and the README stays
a short guide."""
import contextlib
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "demos").glob("*.md")), *sorted((ROOT / "demos" / "results").glob("*.md"))]
_BLOCK = re.compile(r"```python\n(.*?)```\n(?:\s*```text\n(.*?)```)?", re.S)


def _blocks():
    out = []
    for doc in DOCS:
        for i, m in enumerate(_BLOCK.finditer(doc.read_text())):
            code, expected = m.group(1), m.group(2)
            needs_torch = re.search(r"^\s*(import torch|from torch|import qlabref\.torch)", code, re.M) is not None
            out.append(pytest.param(doc, code, expected, needs_torch, id=f"{doc.relative_to(ROOT)}:{i}",
                                    marks=[pytest.mark.torch] if needs_torch else []))
    return out


def _norm(text):
    return [" ".join(line.split()) for line in text.strip().splitlines() if line.strip()]


@pytest.mark.parametrize("doc, code, expected, needs_torch", _blocks())
def test_docs_python_block(doc, code, expected, needs_torch, tmp_path, monkeypatch, request):
    if needs_torch:
        request.getfixturevalue("torch")  # skips without torch (fails under QLABREF_REQUIRE_TORCH=1)
    monkeypatch.chdir(tmp_path)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, f"{doc.relative_to(ROOT)} block", "exec"), {"__name__": "__docs__"})
    if expected is not None:
        assert _norm(buf.getvalue()) == _norm(expected)


def test_every_guide_is_listed_in_the_index():
    index = (ROOT / "demos" / "README.md").read_text()
    for guide in sorted((ROOT / "demos").glob("guide-*.md")):
        assert f"]({guide.name})" in index, f"{guide.name} is not listed in demos/README.md"
    assert "](results/README.md)" in index


_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    """Nothing moved out from under a link: every relative link names a file or folder that exists (anchors
    are checked against the target's headings)."""
    text = doc.read_text()
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"
        if anchor and dest.suffix == ".md":
            slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.M)}
            assert anchor in slugs, f"{doc.relative_to(ROOT)} links to #{anchor}, not a heading of {path or doc.name}"


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def test_readme_is_a_short_guide_that_cites_only_what_exists():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for absent in ("OPTIMIZERS.md", "API.md"):  # design notes that are not in the repository
        for doc in DOCS:
            assert absent not in doc.read_text(), f"{doc.relative_to(ROOT)} cites {absent}"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "arxiv.org/abs/2302.00252" in text


def test_readme_grid_size_matches_the_code():
    """The training guide's one-line description of the MLP grid names how many methods it runs; a method
    added to `qlabref.reproduce.METHODS` without updating the guide fails here."""
    from qlabref import reproduce

    guide = (ROOT / "demos" / "guide-training.md").read_text()
    m = re.search(r"qlabref reproduce mnist-mlp\s+# the grid: every method \((\d+)\) x seeds 0-2", guide)
    assert m is not None, "demos/guide-training.md lost its line describing `qlabref reproduce mnist-mlp`"
    assert int(m.group(1)) == len(reproduce.GRIDS["mnist-mlp"]["seeds"]) == len(reproduce.METHODS)
    assert all(s == (0, 1, 2) for s in reproduce.GRIDS["mnist-mlp"]["seeds"].values())


def test_ci_runs_what_the_readme_test_command_leaves_out():
    """The README's test command is the fast path (a marker expression that needs neither torch nor the slow
    tests); .ci/run reads that expression out of the README and runs its complement, so CI runs every test."""
    first = README.read_text().split("```bash", 1)[1].split("```", 1)[0]
    test_cmd = next(line for line in first.splitlines() if "pytest" in line)
    m = re.search(r'-m "([^"]+)"', test_cmd)
    assert m is not None and "not slow" in m.group(1) and "not torch" in m.group(1), test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'sed -n \'s/.*-m "\\([^"]*\\)".*/\\1/p\'' in ci and '-m "not ($expr)" --ignore=tests/gpu tests' in ci
    assert "'.[test,crosscheck,dask,browser,cuda]'" in ci
    # tests/gpu, left out above, runs whole in the simulator and its compile-only files with it off
    assert re.search(r"NUMBA_ENABLE_CUDASIM=1 [^\n]*\\\n    \.venv-sim/bin/pytest -q -p no:cacheprovider tests/gpu >", ci), ci
    # ... at a 0.1 ms thread switch interval, which is what exposed the simulator's shared-array race
    assert "QLABREF_SIM_SWITCH=1e-4" in ci
    assert ".venv-sim/bin/pytest -q -p no:cacheprovider tests/gpu/test_ptx*.py >" in ci
