"""The GPU smoke script's tiny CPU mode, so that the script a GPU session runs cannot rot (about 30-40 s of CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)  # ~35 s of CPU time; a shared 2-core machine can stretch the wall time
def test_gpu_smoke_tiny_cpu_mode(tmp_path):
    out = tmp_path / "smoke.json"
    md = tmp_path / "smoke.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--tiny", "--device", "cpu",
                           "--json", str(out), "--md", str(md), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=290)
    report = json.loads(out.read_text())
    failed = {k: c.get("error") for k, c in report["checks"].items() if c["status"] != "ok"}
    assert proc.returncode == 0 and not failed, (failed, proc.stderr[-2000:])
    checks = {k: c["detail"] for k, c in report["checks"].items()}
    assert set(checks["train"]) >= {"retinanet/baseline", "retinanet/sampling_free"}
    losses = checks["amp_losses"]["bf16/mask_rcnn"]
    assert set(losses["loss_dtypes"].values()) == {"float32"} and all(g > 0 for g in losses["g"].values())
    assert checks["ddp"]["faster_rcnn"] == "ok" and checks["export"]["model_on_device"]["parity"] is True
    assert {"fp32", "bf16"} <= set(checks["step_time"]) and checks["latency"]["retinanet"]["median_ms"] > 0
    assert "| step_time | ok |" in md.read_text()
