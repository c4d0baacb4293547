"""A training run's files are written atomically with normal permissions, and temp files that a killed save left
behind are removed on the next start / resume."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from sfdeploy.training.trainer import train

from test_train import tiny_cfg


def test_stale_temp_files_removed_on_resume_and_outputs_are_0644(tmp_path, capsys):
    out = tmp_path / "run"
    kw = dict(max_steps=2, data="synthetic:4", checkpoint_every=100, plots=False, priors={"cls": 1e-4})
    old = os.umask(0o022)
    try:
        first = train(tiny_cfg(out, **kw), progress=False, stop_at=1)
        assert first.steps == 1
        dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout)
        leftovers = [out / f".last.pt.{dead}-0123abcd.tmp.pt",  # SIGKILL during a checkpoint save
                     out / ".best.pt.k2j_x9ab.tmp",  # the same, from the previous (mkstemp) writer
                     out / f".config.yaml.{dead}-feedbeef.tmp.yaml"]
        for p in leftovers:
            p.write_bytes(b"half a file")
        resumed = train(tiny_cfg(out, resume=True, **kw), progress=False)
    finally:
        os.umask(old)
    assert resumed.outcome == "completed" and resumed.steps == 2
    assert not any(p.exists() for p in leftovers)
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    assert "left by an interrupted save" in capsys.readouterr().err
    for name in ("last.pt", "config.yaml", "result.json", "metrics.jsonl"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
