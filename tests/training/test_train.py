"""End-to-end training runs (tiny models, synthetic data, a few steps on CPU) and the train CLI contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sfdeploy.checkpoint import load_checkpoint
from sfdeploy.config import ModelConfig
from sfdeploy.training.config import TrainConfig
from sfdeploy.training.metrics_log import read_metrics

def main(argv: list[str]) -> int:
    """`sfdeploy ARGV` with only the training stage registered (other stages are built in parallel)."""
    from unittest import mock

    import sfdeploy.cli as cli

    with mock.patch.object(cli, "STAGE_MODULES", ("sfdeploy.training.cli",)):
        return cli.main(argv)


TINY = ["--backbone", "resnet18", "--fpn-channels", "32", "--image-size", "96", "--data", "synthetic:8",
        "--batch-size", "2", "--workers", "0", "--log-every", "1", "--no-progress"]


def tiny_cfg(out: Path, detector: str = "retinanet", method: str = "sampling_free", **kw) -> TrainConfig:
    model = ModelConfig(detector=detector, method=method, backbone="resnet18", fpn_channels=32, min_size=96,
                        max_size=96, priors=kw.pop("priors", {}))
    base = dict(model=model, data="synthetic:8", out=str(out), max_steps=3, batch_size=2, workers=0, log_every=1,
                warmup_steps=2)
    base.update(kw)
    return TrainConfig(**base)


def test_train_cli_retinanet_sampling_free_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", "retinanet", "--method", "sampling_free", "--guided-form", "paper", *TINY,
               "--out", str(out), "--max-steps", "3", "--prior", "cls=1e-4", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["outcome"] == "completed" and result["steps"] == 3
    for name in ("last.pt", "metrics.jsonl", "config.yaml", "result.json", "plots/losses.png",
                 "plots/guided_scale.png", "plots/total_lr.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.meta["outcome"] == "completed" and ckpt.meta["step"] == 3
    assert ckpt.meta["priors"] == {"cls": 1e-4}
    assert ckpt.config.class_names == ["circle", "square", "triangle", "star"]  # from the data set
    # resumable state loads with weights_only=True (load_checkpoint uses it) and holds the RNG / sampler position
    ts = ckpt.extra["train_state"]
    assert ts["step"] == 3 and ts["sampler"]["position"] == 6 and isinstance(ts["rng"]["torch"], torch.Tensor)
    train = [r for r in read_metrics(out / "metrics.jsonl") if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    for r in train:
        for key in ("classification", "bbox_regression", "guide_delta", "total", "lr", "grad_norm", "step_time",
                    "images_per_s", "memory_mb"):
            assert key in r, key
        g = r["guide"]["head.guide"]
        assert set(g) == {"g", "delta", "loss_cls_raw", "loss_loc"}
        assert g["g"] * g["delta"] * g["loss_cls_raw"] == pytest.approx(r["classification"], rel=1e-4)
    # the resolved config is a valid config file again
    cfg = TrainConfig.from_yaml_file(out / "config.yaml")
    assert cfg.model.priors == {"cls": 1e-4} and cfg.max_steps == 3 and cfg.model.min_size == 96


def test_train_faster_rcnn_sampling_free(tmp_path):
    from sfdeploy.training.trainer import train

    r = train(tiny_cfg(tmp_path / "frcnn", "faster_rcnn", max_steps=2, priors={"rpn": 2e-4}), progress=False)
    assert r.outcome == "completed" and r.steps == 2
    assert (tmp_path / "frcnn" / "last.pt").is_file()
    rec = [x for x in read_metrics(tmp_path / "frcnn" / "metrics.jsonl") if x["event"] == "train"][-1]
    assert set(rec["guide"]) == {"rpn.guide", "roi_heads.guide"}
    for key in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"):
        assert key in rec
    assert r.median_step_time_s > 0 and r.peak_memory_mb > 0


def test_baseline_metrics_have_no_guide(tmp_path):
    from sfdeploy.training.trainer import train

    r = train(tiny_cfg(tmp_path / "base", method="baseline", max_steps=2), progress=False)
    assert r.outcome == "completed"
    recs = [x for x in read_metrics(tmp_path / "base" / "metrics.jsonl") if x["event"] == "train"]
    assert recs and all("guide" not in x and "guide_delta" not in x for x in recs)
    assert (tmp_path / "base" / "plots" / "losses.png").is_file()
    assert not (tmp_path / "base" / "plots" / "guided_scale.png").exists()
    assert r.priors == {"cls": 0.01}


def test_config_file_plus_overrides(tmp_path):
    import argparse

    from sfdeploy.training.cli import _register_train, config_from_args

    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text("model:\n  detector: fcos\n  backbone: mobilenet_v3_large\n  fpn_channels: 64\n"
                        "batch_size: 8\nmax_steps: 50\nlr: 0.005\noptimizer: adamw\n")
    parser = argparse.ArgumentParser()
    _register_train(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", str(cfg_file), "--batch-size", "2", "--epochs", "3",
                              "--image-size", "128", "--prior", "cls=3e-3", "--no-guided-scaling", "--out", "x"])
    cfg = config_from_args(args)
    assert cfg.model.detector == "fcos" and cfg.model.backbone == "mobilenet_v3_large"  # from the file
    assert cfg.model.fpn_channels == 64 and cfg.lr == 0.005 and cfg.optimizer == "adamw"
    assert cfg.batch_size == 2 and cfg.epochs == 3 and cfg.max_steps is None  # flags win
    assert cfg.model.min_size == cfg.model.max_size == 128
    assert cfg.model.priors == {"cls": 3e-3} and cfg.model.guided_scaling is False
    assert not cfg.model.uses_guided_scaling and cfg.model.uses_optimal_init
    # paper lr with linear scaling when no lr is given
    assert TrainConfig(batch_size=2).effective_lr == pytest.approx(0.01 * 2 / 16)


def test_rcnn_cost_knob_flags():
    import argparse

    from sfdeploy.training.cli import _register_train, config_from_args

    parser = argparse.ArgumentParser()
    _register_train(parser.add_subparsers())
    args = parser.parse_args(["train", "--model", "mask_rcnn", "--rpn-proposals-train", "512", "--mask-positives",
                              "128", "--out", "x"])
    cfg = config_from_args(args)
    assert cfg.model.rpn_post_nms_top_n_train == 512 and cfg.model.mask_positives_per_image == 128
    default = config_from_args(parser.parse_args(["train", "--model", "mask_rcnn", "--out", "x"]))
    assert default.model.rpn_post_nms_top_n_train == 1000 and default.model.mask_positives_per_image is None


def test_bad_data_and_config_are_one_line_errors(tmp_path, capsys):
    rc = main(["train", *TINY, "--data", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o"),
               "--max-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("sfdeploy train: error:") and "missing.json" in err[-1]
    rc = main(["train", *TINY, "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "config file not found" in capsys.readouterr().err
    rc = main(["train", *TINY, "--out", str(tmp_path / "o2"), "--resume"])
    assert rc == 2 and "cannot resume" in capsys.readouterr().err


def test_optimizer_groups_and_schedule():
    from sfdeploy.models import build_model
    from sfdeploy.training.optim import build_optimizer, lr_factor

    cfg = tiny_cfg(Path("unused"), max_steps=90, warmup_steps=10)
    model = build_model(cfg.model)
    opt = build_optimizer(model, cfg)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == cfg.weight_decay and no_decay["weight_decay"] == 0.0
    sigma = model.head.guide.sigma  # the default (frozen) guide's learnable weights get no decay
    assert any(p is sigma for p in no_decay["params"]) and not any(p is sigma for p in decay["params"])
    assert all(p.ndim > 1 for p in decay["params"])
    assert lr_factor(0, 90, cfg) == pytest.approx(1 / 3)
    assert lr_factor(10, 90, cfg) == 1.0
    assert lr_factor(60, 90, cfg) == pytest.approx(0.1) and lr_factor(80, 90, cfg) == pytest.approx(0.01)


def test_authors_protocol_flags():
    import argparse

    from sfdeploy.training.cli import _register_train, config_from_args

    parser = argparse.ArgumentParser()
    _register_train(parser.add_subparsers())
    args = parser.parse_args(["train", "--model", "faster_rcnn", "--out", "x", "--rcnn-guide-delta",
                              "--rpn-straddle-thresh", "0", "--bias-lr-factor", "2", "--warmup-steps", "500"])
    cfg = config_from_args(args)
    assert cfg.model.rcnn_guide_delta is True and cfg.model.rpn_straddle_thresh == 0.0
    assert cfg.bias_lr_factor == 2.0 and cfg.warmup_steps == 500
    one = config_from_args(parser.parse_args(["train", "--model", "fcos", "--out", "x", "--guided-form", "frozen",
                                              "--guide-freeze-steps", "50"]))
    assert one.model.guided_form == "frozen" and one.model.guide_freeze_steps == 50
    default = config_from_args(parser.parse_args(["train", "--model", "mask_rcnn", "--out", "x"]))
    assert default.model.rcnn_guide_delta is False and default.model.guided_form == "frozen"
    assert default.bias_lr_factor == 1.0 and default.model.rpn_straddle_thresh is None
