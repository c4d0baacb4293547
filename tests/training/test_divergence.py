"""Divergence is a result, not a crash: clean stop, message with step and term, last good checkpoint kept."""

from __future__ import annotations

import torch

from sfdeploy.checkpoint import load_checkpoint
from sfdeploy.training.metrics_log import read_metrics
from sfdeploy.training.trainer import train

from test_train import TINY, main, tiny_cfg


def test_nan_loss_term_stops_cleanly_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from sfdeploy.sampling_free.heads import SFRetinaNetHead

    original = SFRetinaNetHead.compute_loss
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        losses = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            losses["bbox_regression"] = losses["bbox_regression"] * float("nan")
        return losses

    monkeypatch.setattr(SFRetinaNetHead, "compute_loss", poisoned)
    out = tmp_path / "nan"
    r = train(tiny_cfg(out, max_steps=6, checkpoint_every=2, priors={"cls": 1e-4}), progress=False)
    assert r.outcome == "diverged" and r.diverged_step == 4 and r.diverged_term == "bbox_regression"
    assert r.steps == 3
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("warning: diverged")]
    assert line and "step 4" in line[0] and "bbox_regression" in line[0]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.meta["step"] == 2 and ckpt.meta["outcome"] == "diverged" and ckpt.meta["diverged_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt.state_dict.values() if v.is_floating_point())
    recs = read_metrics(out / "metrics.jsonl")
    assert recs[-1]["event"] == "end" and recs[-1]["outcome"] == "diverged"
    assert any(x["event"] == "diverged" and x["term"] == "bbox_regression" for x in recs)


def test_ce_with_huge_lr_diverges_cli_exit_codes(tmp_path, capsys):
    args = ["train", "--model", "retinanet", "--method", "ce", *TINY, "--max-steps", "4", "--lr", "1e4",
            "--grad-clip", "0", "--warmup-steps", "0", "--no-plots"]
    rc = main([*args, "--out", str(tmp_path / "ce")])
    err = capsys.readouterr().err
    assert rc == 0 and "warning: diverged at step" in err
    result = load_checkpoint(tmp_path / "ce" / "last.pt").meta
    assert result["outcome"] == "diverged"
    rc = main([*args, "--out", str(tmp_path / "ce2"), "--fail-on-divergence"])
    assert rc == 4
