"""--resume continues exactly: 4 steps straight == 2 steps + resume 2 steps (losses and weights, bit for bit, CPU)."""

from __future__ import annotations

import torch

from sfdeploy.checkpoint import load_checkpoint
from sfdeploy.training.metrics_log import read_metrics
from sfdeploy.training.trainer import train

from test_train import tiny_cfg


def _losses(out):
    return [(r["step"], r["total"], r["classification"], r["bbox_regression"], r["lr"])
            for r in read_metrics(out / "metrics.jsonl") if r["event"] == "train"]


def test_resume_is_exact(tmp_path):
    # hflip on + shuffling: data randomness must be restored too; 4 images / batch 2 crosses an epoch boundary
    kw = dict(max_steps=4, data="synthetic:4", checkpoint_every=100, warmup_steps=2, lr_steps=(0.5,), plots=False,
              priors={"cls": 1e-4})
    straight = train(tiny_cfg(tmp_path / "a", **kw), progress=False)
    assert straight.outcome == "completed"

    first = train(tiny_cfg(tmp_path / "b", **kw), progress=False, stop_at=2)
    assert first.outcome == "interrupted" and first.steps == 2
    assert load_checkpoint(tmp_path / "b" / "last.pt").meta["outcome"] == "interrupted"
    resumed = train(tiny_cfg(tmp_path / "b", resume=True, **kw), progress=False)
    assert resumed.outcome == "completed" and resumed.steps == 4

    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [s for s, *_ in b] == [1, 2, 3, 4]
    assert a == b  # exact floats
    wa = load_checkpoint(tmp_path / "a" / "last.pt").state_dict
    wb = load_checkpoint(tmp_path / "b" / "last.pt").state_dict
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
