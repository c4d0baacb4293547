"""The slim runtime: loading and serving an ONNX artefact never imports torch (or anything of the `full` extra).

The child process installs an import hook that records (and fails) every import of a `full`-only package, so a
guarded `try: import torch` that would silently fall back is caught too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import importlib.abc, io, json, sys
from sfdeploy.cli import FULL_INSTALL_MODULES
attempts = []

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FULL_INSTALL_MODULES:
            attempts.append(name)
            raise ModuleNotFoundError(f"blocked: {name}", name=name)
        return None

sys.meta_path.insert(0, Block())
import numpy as np
from PIL import Image
from fastapi.testclient import TestClient
from sfdeploy import serving
from sfdeploy.serving.server import create_app
from sfdeploy.cli import main

pred = serving.load(sys.argv[1])
buf = io.BytesIO()
Image.fromarray(np.full((64, 80, 3), 128, np.uint8)).save(buf, format="PNG")
with TestClient(create_app({"m": pred})) as c:
    r = c.post("/v1/detect", files={"image": ("a.png", buf.getvalue(), "image/png")})
    status = [r.status_code, c.get("/metrics").status_code, c.get("/readyz").status_code]
img = sys.argv[2]
Image.fromarray(np.full((64, 80, 3), 128, np.uint8)).save(img)
cli_predict = main(["predict", sys.argv[1], img, "--json", sys.argv[3]])
cli_missing = main(["predict", sys.argv[1], img + ".missing.png"])  # a user error on the slim install
serving_attempts = list(attempts)
cli_train = main(["train", "--model", "retinanet", "--data", "synthetic:2", "--max-steps", "1", "--out", sys.argv[4]])
print(json.dumps({"attempts": serving_attempts, "cli_missing": cli_missing, "status": status,
                  "cli_predict": cli_predict, "cli_train": cli_train,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in FULL_INSTALL_MODULES)}))
"""


def test_onnx_serving_never_imports_torch(artefacts, tmp_path):  # type: ignore[no-untyped-def]
    onnx_path = artefacts.get("retinanet")[1]
    proc = subprocess.run([sys.executable, "-c", CHILD, str(onnx_path), str(tmp_path / "a.png"),
                           str(tmp_path / "res.json"), str(tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["attempts"] == [] and out["loaded"] == [], out
    assert out["status"] == [200, 200, 200] and out["cli_predict"] == 0 and out["cli_missing"] == 2
    assert json.loads((tmp_path / "res.json").read_text()) is not None
    # a torch-needing command on the slim install: one line naming the extra, exit 2, no traceback
    assert out["cli_train"] == 2
    err = [line for line in proc.stderr.splitlines() if "sfdeploy train" in line]
    assert err and "sfdeploy[full]" in err[-1] and "Traceback" not in proc.stderr


def test_core_dependencies_are_the_slim_runtime():  # type: ignore[no-untyped-def]
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]}
    full = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["optional-dependencies"]["full"]}
    assert core == {"numpy", "pillow", "pyyaml", "tqdm"}  # ONNX Runtime: the `cpu` or the `gpu` extra, never both
    assert {"torch", "torchvision", "onnx"} <= full
    assert project["optional-dependencies"]["cpu"] == ["onnxruntime>=1.18"]
    assert any("full" in d for d in project["optional-dependencies"]["dev"])  # CI installs everything


@pytest.mark.parametrize("module", ["sfdeploy.serving", "sfdeploy.serving.server", "sfdeploy.serving.metrics", "sfdeploy.cli"])
def test_light_modules_import_without_full(module):  # type: ignore[no-untyped-def]
    code = (f"import sys; import {module}; from sfdeploy.cli import FULL_INSTALL_MODULES; "
            "bad = [m for m in sys.modules if m.split('.')[0] in FULL_INSTALL_MODULES]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
