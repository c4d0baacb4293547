"""2-process DDP on CPU (gloo) under torchrun: rank 0 writes checkpoint and metrics, both ranks end equal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sfdeploy.checkpoint import load_checkpoint
from sfdeploy.training.metrics_log import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def test_two_process_gloo(tmp_path):
    out = tmp_path / "ddp"
    # `python -m sfdeploy` with only the training stage registered (the other stages are optional here)
    script = tmp_path / "sfdeploy_train.py"
    script.write_text("import sys\nimport sfdeploy.cli as c\nc.STAGE_MODULES = ('sfdeploy.training.cli',)\nsys.exit(c.main())\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), "train", "--model", "retinanet", "--method", "sampling_free", "--backbone", "resnet18",
           "--fpn-channels", "32", "--image-size", "96", "--data", "synthetic:8", "--batch-size", "4",
           "--workers", "0", "--max-steps", "3", "--log-every", "1", "--prior", "cls=1e-4", "--device", "cpu",
           "--no-progress", "--no-plots", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.meta["step"] == 3 and ckpt.meta["world_size"] == 2 and ckpt.meta["outcome"] == "completed"
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in recs if r["event"] == "train"] == [1, 2, 3]  # written once (rank 0 only)
    result = json.loads((out / "result.json").read_text())
    digests = result["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert recs[-1]["ranks_agree"] is True
