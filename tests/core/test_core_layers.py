"""The layer contract (pyproject.toml [tool.importlinter], docs/CONTRACTS.md "Layers") holds."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP = {"sfdeploy.app", "sfdeploy.cli", "sfdeploy.demo_cli", "sfdeploy.__main__"}  # above every stage


def _contracts() -> list[dict]:  # type: ignore[type-arg]
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _lint_imports() -> str | None:
    exe = Path(sys.executable).with_name("lint-imports")
    return str(exe) if exe.is_file() else shutil.which("lint-imports")


def installed_layout(dest: Path) -> Path:
    """The package as a wheel installs it: sfdeploy/ with the stage folders inside (pyproject package-dir).

    import-linter finds a package's modules on disk from its import spec, which does not see the checkout's
    extra search path for the stages; a copy in the installed layout is what users run anyway."""
    tomllib = pytest.importorskip("tomllib")
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "sfdeploy", dest / "sfdeploy", ignore=ignore)
    for name, folder in package_dir.items():
        shutil.copytree(ROOT / folder, dest / Path(*name.split(".")), ignore=ignore)
    return dest


def test_lint_imports_contracts_are_kept(tmp_path: Path) -> None:
    exe = _lint_imports()
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    site = installed_layout(tmp_path / "site")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([exe, "--no-cache", str(ROOT / "pyproject.toml")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert f"{len(_contracts())} kept, 0 broken" in out.stdout


def test_every_sfdeploy_module_is_on_a_floor() -> None:
    """A new module under sfdeploy/ must be listed as core in the contract (or be part of the top floor)."""
    core = set(_contracts()[0]["source_modules"])
    for path in (ROOT / "sfdeploy").iterdir():
        if path.name.startswith(("_", ".")) and path.name != "__main__.py":
            continue
        if path.suffix == ".py" or (path / "__init__.py").is_file():
            name = f"sfdeploy.{path.stem}"
            assert name in core or name in TOP, f"{name} is on no floor of [tool.importlinter]"


def test_nothing_imports_the_app_entry_point() -> None:
    """`app.py` is the demo's entry point only (import-linter cannot check a top-level module)."""
    for folder in ("sfdeploy", "training", "export", "serving"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                assert not any(n == "app" or n.startswith("app.") for n in names), f"{path} imports app"
