"""Packaging and command-line contract: what the README and CI rely on."""
import configparser
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_every_package_folder_is_listed_in_setup_cfg():
    cfg = _setup_cfg()
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    found = {"qlabref.kernels"} if (ROOT / "kernels" / "__init__.py").exists() else set()
    for init in (ROOT / "qlabref").rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        found.add(".".join(rel.parts))
    assert found == listed, f"setup.cfg packages {sorted(listed)} != package folders {sorted(found)}"
    mapping = cfg["options"]["package_dir"]
    assert "qlabref.kernels = kernels" in mapping


def test_pyproject_holds_only_build_system():
    text = (ROOT / "pyproject.toml").read_text()
    tables = [line.strip() for line in text.splitlines() if line.strip().startswith("[")]
    assert tables == ["[build-system]"]


def test_extras_and_dependencies():
    cfg = _setup_cfg()
    deps = cfg["options"]["install_requires"]
    for name in ("numpy", "scipy", "matplotlib", "numba"):
        assert name in deps
    assert "torch" not in deps
    extras = cfg["options.extras_require"]
    assert "numba-cuda[cu13]" in extras["cuda"]
    assert "pytest" in extras["test"] and "hypothesis" in extras["test"]
    assert "torch" in extras["torch"]


def test_import_needs_neither_torch_nor_cuda(tmp_path):
    code = (
        "import sys, qlabref, qlabref.kernels;"
        "bad = [m for m in ('torch', 'numba.cuda') if m in sys.modules];"
        "print(','.join(bad))"
    )
    # run outside the repository, so the installed package (not the source folder) is imported
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "", f"import qlabref pulled in {out.stdout.strip()}"


def test_cli_help_for_every_command():
    from qlabref import cli

    parser = cli.build_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--help"])
    assert e.value.code == 0
    names = [m.NAME for m in cli._command_modules()]
    assert "demo" in names
    for name in names:
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0, name


def test_console_script_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "qlabref", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "demo" in out.stdout


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(first_block) == 2, first_block
    demo, tests = first_block
    assert "qlabref demo" in demo and "python3 -m venv" in demo
    assert "pytest" in tests and "[test]" in tests and "python3 -m venv" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert "QLABREF_REQUIRE_TORCH=1" in ci and "torch==2.13.0" in ci


def test_star_import_and_every_advertised_name_resolves():
    """Every name in qlabref.__all__ resolves (the lazy subpackages exist), so `from qlabref import *` works."""
    import qlabref

    for name in qlabref.__all__:
        assert getattr(qlabref, name) is not None, name
    namespace = {}
    exec("from qlabref import *", namespace)
    assert "nn" in namespace and "models" in namespace


def test_kernels_import_from_a_source_checkout():
    """`python -m qlabref` run inside the repository imports the checkout's qlabref (not the installed
    one); qlabref.kernels (the top-level kernels/ folder) must still resolve there."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    res = subprocess.run([sys.executable, "-c", "import qlabref.kernels as k, qlabref; print(k.__file__); "
                          "print(qlabref.__file__)"], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    kfile, qfile = res.stdout.split()
    assert pathlib.Path(kfile).name == "__init__.py" and pathlib.Path(kfile).parent.name == "kernels"
