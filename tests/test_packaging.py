"""One installed name: `import shopsight` is the entry point; `tools`, `index`, `evals`, … are not top-level modules."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERIC = ("agent", "tools", "prompts", "index", "behavior", "integrations", "evals", "cli")


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("name", GENERIC)
def test_a_generic_top_level_name_does_not_import_even_from_the_checkout(name, tmp_path):
    for cwd in (ROOT, tmp_path):
        proc = _python(f"import {name}", cwd)
        assert proc.returncode != 0, f"`import {name}` worked from {cwd}"
        assert "ImportError" in proc.stderr or "ModuleNotFoundError" in proc.stderr, proc.stderr
    # From the checkout it says where the module is now.
    assert f"shopsight.{name}" in _python(f"import {name}", ROOT).stderr


def test_shopsight_imports_its_subpackages_from_anywhere(tmp_path):
    code = ("import shopsight, shopsight.tools, shopsight.cli, shopsight.evals.runner, shopsight.prompts\n"
            "from shopsight.tools import default_registry\n"
            "print(len(default_registry().names), shopsight.prompts.load_prompt('system').version != '')")
    for cwd in (ROOT, tmp_path):
        proc = _python(code, cwd)
        assert proc.returncode == 0, proc.stderr
        n_tools, has_prompt = proc.stdout.split()
        assert int(n_tools) >= 10 and has_prompt == "True"


def test_the_checkout_that_runs_is_the_code_that_is_imported():
    proc = _python("import shopsight.tools, shopsight.cli; print(shopsight.tools.__file__); print(shopsight.cli.__file__)", ROOT)
    assert proc.returncode == 0, proc.stderr
    tools_file, cli_file = (Path(line) for line in proc.stdout.split())
    assert tools_file == ROOT / "tools" / "__init__.py"
    assert cli_file.resolve() == ROOT / "cli.py"


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package_with_its_data(tmp_path):
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "workspace", "results", ".pytest_cache", "tests"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("shopsight-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"shopsight"}
    for path in ("shopsight/cli.py", "shopsight/tools/registry.py", "shopsight/prompts/system.md",
                 "shopsight/evals/demo.yaml", "shopsight/integrations/slack_manifest.yaml", "shopsight/behavior/models/churn.py"):
        assert path in names, path
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "shopsight = shopsight.cli:app" in entry
    # Installed on its own (no checkout beside it), the package finds its subpackages inside itself.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   capture_output=True, text=True, timeout=600, check=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import shopsight.tools, shopsight.cli; "
            "print(shopsight.tools.__file__); print(shopsight.__path__)")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(str(target / "shopsight" / "tools"))
    assert str(ROOT) not in proc.stdout


def test_every_subpackage_folder_is_in_the_install():
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = cfg["package-dir"]
    listed = set(cfg["packages"])
    for name, folder in mapped.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            dotted = ".".join([name, *rel.parts]) if rel.parts else name
            assert dotted in listed, f"{init.parent} is a package the install leaves out: add '{dotted}' to pyproject.toml's packages"
    assert {n.split(".")[1] for n in listed if "." in n} >= set(GENERIC) - {"cli"}
