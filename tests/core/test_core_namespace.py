"""One namespace: the stages import as sfdeploy.training / sfdeploy.export / sfdeploy.serving, from a source
checkout and from an installed wheel alike, and never under their bare folder names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("training", "export", "serving")


def _setuptools_config() -> dict:  # type: ignore[type-arg]
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _python(code: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_package_list_names_every_package_folder() -> None:
    """pyproject lists the packages explicitly (a mapped layout cannot use find): a new subpackage must be added."""
    cfg = _setuptools_config()
    folder_of = {name: folder for name, folder in cfg["package-dir"].items()}
    found = set()
    for top, folder in [("sfdeploy", "sfdeploy"), *[(f"sfdeploy.{s}", s) for s in STAGES]]:
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((top, *rel)))
    assert found == set(cfg["packages"])
    assert folder_of == {f"sfdeploy.{s}": s for s in STAGES}
    assert "py-modules" not in cfg  # app.py is the checkout's entry point, not an installed top-level module


@pytest.mark.parametrize("stage", STAGES)
def test_bare_stage_name_is_refused_in_a_checkout(stage: str) -> None:
    out = _python(f"import {stage}", cwd=ROOT, pythonpath=str(ROOT))
    assert out.returncode != 0
    assert f"the {stage} stage is sfdeploy.{stage}" in out.stderr


def test_checkout_imports_each_stage_once_under_sfdeploy(tmp_path: Path) -> None:
    """From the checkout (whatever the working directory), every stage module has exactly one name in sys.modules."""
    code = ("import sys, sfdeploy.cli as c\n"
            "c.build_parser()\n"  # imports every stage's CLI module
            "import sfdeploy.serving, sfdeploy.export, sfdeploy.training\n"
            "bare = sorted(m for m in sys.modules if m.split('.')[0] in ('training', 'export', 'serving', 'app'))\n"
            "print(sfdeploy.serving.__file__)\n"
            "assert not bare, bare\n")
    out = _python(code, cwd=tmp_path, pythonpath=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    assert Path(out.stdout.strip()) == ROOT / "serving" / "__init__.py"


@pytest.mark.slow
def test_wheel_installs_one_namespace(tmp_path: Path) -> None:
    """`pip install .` leaves no top-level training/export/serving/app in site-packages, and the stages import from
    inside the installed sfdeploy/."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # build from a copy: a build writes build/ and *.egg-info next to pyproject.toml
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    for name in files:
        if (ROOT / name).is_file() and not name.startswith(("tests/", "docs/", "benchmarks/")):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("sfdeploy-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"training", "export", "serving", "app.py"}, sorted(tops)
    assert {"sfdeploy/training/trainer.py", "sfdeploy/export/onnx.py", "sfdeploy/serving/backends/__init__.py",
            "sfdeploy/export/trt_supported_ops.json"} <= set(names)

    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:  # what `pip install` puts into site-packages
        zf.extractall(site)
    code = ("import sys, sfdeploy, sfdeploy.serving, sfdeploy.cli as c\n"
            "c.build_parser()\n"
            "print(sfdeploy.serving.__file__)\n"
            "print(len(sfdeploy.__path__))\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('training', 'export', 'serving')]\n")
    out = _python(code, cwd=tmp_path, pythonpath=str(site))
    assert out.returncode == 0, out.stderr[-3000:]
    file, n_paths = out.stdout.split()
    assert Path(file) == site / "sfdeploy" / "serving" / "__init__.py"
    assert n_paths == "1"  # no checkout search path in an installed package
