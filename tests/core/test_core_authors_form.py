"""Sampling-Free as the authors ran it (sampling-free.md sec. 3): no delta on the R-CNN heads, the 2021 frozen
one-stage form, an fp32 guide averaged over ranks, bias lr groups, straddling RPN anchors, the mask head's start."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from sfdeploy.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sfdeploy.config import ConfigError, ModelConfig
from sfdeploy.models import build_model
from sfdeploy.sampling_free.heads import straddling_anchors
from sfdeploy.sampling_free.losses import FrozenGuidedLoss, GuidedLossScaling, guide_ratio

from core_helpers import fewer_proposals


# ---------------------------------------------------------------------------------------------- R-CNN heads
@pytest.mark.parametrize("detector", ["faster_rcnn", "mask_rcnn"])
def test_rcnn_heads_use_the_plain_guide_without_delta(tiny_cfg, tiny_batch, detector: str) -> None:
    torch.manual_seed(0)
    model = fewer_proposals(build_model(tiny_cfg(detector, "sampling_free"), load_backbone_weights=False)).train()
    assert not [n for n, _ in model.named_parameters() if "guide" in n], "the authors' R-CNN guide has no parameter"
    losses = model(*tiny_batch(n=2, masks=detector == "mask_rcnn"))
    assert not {"loss_rpn_delta", "loss_roi_delta"} & set(losses)
    # forward values: objectness == L_loc of the RPN, RoI classification == 2 x L_loc of the box head
    assert losses["loss_objectness"].item() == pytest.approx(losses["loss_rpn_box_reg"].item(), rel=1e-5)
    assert losses["loss_classifier"].item() == pytest.approx(2 * losses["loss_box_reg"].item(), rel=1e-5)


def test_rcnn_guide_delta_switch_restores_the_learnable_delta(tiny_cfg, tiny_batch) -> None:
    torch.manual_seed(0)
    model = fewer_proposals(build_model(tiny_cfg("faster_rcnn", "sampling_free", rcnn_guide_delta=True),
                                        load_backbone_weights=False)).train()
    names = {n for n, _ in model.named_parameters() if "guide" in n}
    assert names == {"rpn.guide.d", "roi_heads.guide.d"}
    losses = model(*tiny_batch(n=2))
    assert {"loss_rpn_delta", "loss_roi_delta"} <= set(losses)


def test_old_checkpoints_load_as_trained_with_delta(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg("faster_rcnn", "sampling_free", rcnn_guide_delta=True)
    model = build_model(cfg, load_backbone_weights=False)
    path = save_checkpoint(tmp_path / "old.pt", model, cfg)
    payload = torch.load(path, weights_only=True)
    for key in ("rcnn_guide_delta", "guided_form", "guide_freeze_steps", "rpn_straddle_thresh"):
        del payload["config"][key]  # what a checkpoint written before these options holds
    torch.save(payload, path)
    ckpt = load_checkpoint(path)
    assert ckpt.config.rcnn_guide_delta is True and ckpt.config.guided_form == "paper"
    rebuilt = model_from_checkpoint(ckpt)
    torch.testing.assert_close(rebuilt.rpn.guide.d, model.rpn.guide.d)
    # a config a user writes today gets today's defaults
    assert ModelConfig.from_dict({"detector": "faster_rcnn"}).rcnn_guide_delta is False
    assert ModelConfig.from_artefact({"detector": "faster_rcnn", "method": "baseline"}).rcnn_guide_delta is False


# ---------------------------------------------------------------------------------------------- frozen form
def test_frozen_guide_measures_then_freezes_and_weights_every_term() -> None:
    guide = FrozenGuidedLoss(("cls", "box", "ctr"), freeze_after=2)
    theta = torch.ones((), requires_grad=True)

    def step(cls: float, box: float, ctr: float):
        return guide({"cls": theta * cls, "box": theta * box, "ctr": theta * ctr})

    step(4.0, 0.0, 0.0)  # no positives: measures nothing
    assert int(guide.steps) == 0 and guide.g.item() == 0.0
    step(4.0, 1.0, 3.0)
    assert guide.g.item() == pytest.approx(0.5)  # mean(1, 3) / 4
    weighted, log_sigma = step(10.0, 2.0, 4.0)
    assert guide.frozen and guide.g.item() == pytest.approx(0.3)
    weighted, log_sigma = step(1.0, 2.0, 4.0)
    assert guide.g.item() == pytest.approx(0.3)  # frozen: no longer follows the losses
    # sigma = 1: L_i / 2 and sum log sigma = 0; the cls term carries g without gradient through it
    assert weighted["cls"].item() == pytest.approx(0.3 * 1.0 / 2)
    assert weighted["box"].item() == pytest.approx(1.0) and log_sigma.item() == pytest.approx(0.0)
    total = sum(weighted.values()) + log_sigma
    total.backward()
    # d/dsigma (L / (2 sigma^2) + log sigma) = 1 - L at sigma = 1
    torch.testing.assert_close(guide.sigma.grad, torch.tensor([1 - 0.3, 1 - 2.0, 1 - 4.0]))
    assert theta.grad.item() == pytest.approx(0.3 / 2 + 2.0 / 2 + 4.0 / 2)
    assert {"g", "steps", "sigma"} <= set(guide.state_dict())  # resume keeps the frozen g


def test_frozen_guide_does_not_measure_in_eval_mode() -> None:
    guide = FrozenGuidedLoss(("cls", "box"), freeze_after=5).eval()
    guide({"cls": torch.tensor(2.0), "box": torch.tensor(1.0)})
    assert int(guide.steps) == 0


@pytest.mark.parametrize("detector,names", [("retinanet", {"classification", "bbox_regression"}),
                                            ("fcos", {"classification", "bbox_regression", "bbox_ctrness"})])
def test_one_stage_frozen_form_trains(tiny_cfg, tiny_batch, detector: str, names: set[str]) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(detector, "sampling_free", guided_form="frozen", guide_freeze_steps=1)
    model = build_model(cfg, load_backbone_weights=False).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g_values = []
    for _ in range(3):
        losses = model(*tiny_batch(n=2))
        assert set(losses) == names | {"guide_sigma"}
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        g_values.append(model.head.guide.g.item())
    assert g_values[0] > 0 and g_values[0] == g_values[1] == g_values[2]
    assert model.head.guide.sigma.grad is not None


def test_guided_form_is_validated(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match="guided_form"):
        tiny_cfg("retinanet", guided_form="later")
    with pytest.raises(ConfigError, match="guide_freeze_steps"):
        tiny_cfg("retinanet", guide_freeze_steps=0)


# ---------------------------------------------------------------------------------------------- fp32, ranks
def test_guide_is_float32_under_fp16_losses() -> None:
    loss_cls = torch.tensor(3e4, dtype=torch.float16)
    loss_loc = torch.tensor(1e-4, dtype=torch.float16)
    g = guide_ratio(loss_cls, loss_loc)
    assert g.dtype == torch.float32 and torch.isfinite(g) and g.item() > 0
    scaled, _ = GuidedLossScaling(learn_delta=False)(torch.tensor(1e-8, dtype=torch.float16), loss_loc)
    assert torch.isfinite(scaled)  # L_cls underflowing to 0 in fp16 gives g = L_loc / 1e-12, not inf


def _rank_main(rank: int, port: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    cls = torch.tensor([3.0, 1.0])[rank]
    loc = torch.tensor([0.0, 0.5])[rank]  # rank 0 has no positives in its batch
    g = GuidedLossScaling(learn_delta=False)(cls, loc)[0] / cls
    torch.save(g, f"{out}/g{rank}.pt")
    torch.distributed.destroy_process_group()


def test_guide_is_averaged_over_ranks(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_rank_main, args=(port, str(tmp_path)), nprocs=2)
    g0, g1 = (torch.load(tmp_path / f"g{r}.pt", weights_only=True) for r in (0, 1))
    # equal on both ranks and equal to one process on the concatenated batch: (0 + 0.5) / (3 + 1)
    assert g0.item() == pytest.approx(0.125) and g1.item() == pytest.approx(0.125)


# ---------------------------------------------------------------------------------------------- protocol
def test_bias_lr_factor_and_no_decay_groups(tiny_cfg) -> None:
    from sfdeploy.training.config import TrainConfig
    from sfdeploy.training.optim import build_optimizer, build_scheduler

    model = build_model(tiny_cfg("retinanet", "sampling_free"), load_backbone_weights=False)
    biases = {id(p) for n, p in model.named_parameters() if n.endswith(".bias")}
    opt = build_optimizer(model, TrainConfig(lr=0.01, bias_lr_factor=2.0, weight_decay=1e-4))
    by_kind = {}
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        kind = "bias" if ids <= biases else ("mixed" if ids & biases else "other")
        by_kind.setdefault(kind, []).append(group)
    assert "mixed" not in by_kind
    (bias_group,) = by_kind["bias"]
    assert bias_group["lr"] == pytest.approx(0.02) and bias_group["weight_decay"] == 0.0
    assert {id(p) for p in bias_group["params"]} == biases
    decayed = [g for g in by_kind["other"] if g["weight_decay"] > 0]
    assert decayed and all(g["lr"] == pytest.approx(0.01) for g in by_kind["other"])
    sched = build_scheduler(opt, 100, TrainConfig(lr=0.01, bias_lr_factor=2.0, warmup_steps=0))
    sched.step()
    assert bias_group["lr"] == pytest.approx(2 * opt.param_groups[0]["lr"])  # the schedule keeps the factor
    default = build_optimizer(model, TrainConfig(lr=0.01))
    assert all(g["lr"] == pytest.approx(0.01) for g in default.param_groups)


@pytest.mark.parametrize("method", ["baseline", "sampling_free"])
def test_rpn_straddle_threshold_ignores_border_anchors(tiny_cfg, tiny_batch, method: str) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg("faster_rcnn", method, rpn_straddle_thresh=0.0)
    model = build_model(cfg, load_backbone_weights=False).train()
    images, targets = tiny_batch(n=1)
    captured = {}
    original = model.rpn.assign_targets_to_anchors

    def spy(anchors, tg):
        labels, matched = original(anchors, tg)
        captured["labels"], captured["anchors"] = labels[0], anchors[0]
        return labels, matched

    model.rpn.assign_targets_to_anchors = spy
    model(images, targets)
    outside = straddling_anchors(captured["anchors"], (64, 64), 0.0)
    assert outside.any() and (~outside).any()
    assert (captured["labels"][outside] == -1).all()
    assert (captured["labels"][~outside] >= 0).any()
    # the prior counts the anchors the loss labels: same fg / bg as the model's own assignment
    from sfdeploy.sampling_free.prior import _Counter

    fg, bg = _Counter(cfg, model).count(64, 64, targets[0]["boxes"].numpy())
    assert (fg, bg) == (int((captured["labels"] == 1).sum()), int((captured["labels"] == 0).sum()))


def test_straddle_threshold_is_validated(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match="rpn_straddle_thresh"):
        tiny_cfg("retinanet", rpn_straddle_thresh=0.0)
    with pytest.raises(ConfigError, match="rpn_straddle_thresh"):
        tiny_cfg("faster_rcnn", rpn_straddle_thresh=-1.0)


# ---------------------------------------------------------------------------------------------- mask head start
@pytest.mark.parametrize("backbone,method", [("resnet18", "baseline"), ("resnet18", "sampling_free"),
                                             ("resnet50", "sampling_free"), ("mobilenet_v3_large", "baseline"),
                                             ("efficientnet_lite0", "sampling_free"), ("efficientnet_lite0", "ce")])
def test_mask_loss_starts_uninformative(tiny_cfg, tiny_batch, backbone: str, method: str) -> None:
    """An untrained mask head predicts ~0.5 everywhere (loss ~0.69), not +-20 logits (loss 11-13 before)."""
    torch.manual_seed(0)
    model = fewer_proposals(build_model(tiny_cfg("mask_rcnn", method, backbone=backbone, fpn_channels=64),
                                        load_backbone_weights=False)).train()
    losses = model(*tiny_batch(n=2, masks=True))
    assert losses["loss_mask"].item() < 1.5


# ---------------------------------------------------------------------------------------------- box predictor start
@pytest.mark.parametrize("detector,method", [("faster_rcnn", "baseline"), ("faster_rcnn", "sampling_free"),
                                             ("mask_rcnn", "ce")])
def test_box_predictor_starts_like_the_authors(tiny_cfg, detector: str, method: str) -> None:
    """cls_score ~ N(0, 0.01), bbox_pred ~ N(0, 0.001), zero biases (torchvision's default std is 0.018)."""
    torch.manual_seed(0)
    predictor = build_model(tiny_cfg(detector, method), load_backbone_weights=False).roi_heads.box_predictor
    assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert not predictor.cls_score.bias.any() and not predictor.bbox_pred.bias.any()


def test_rcnn_starts_with_small_box_deltas(tiny_cfg, tiny_batch) -> None:
    """At step 0 the RoI head predicts (nearly) the proposals themselves and a near-uniform class distribution."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("faster_rcnn", "baseline"), load_backbone_weights=False).eval()
    images, _ = tiny_batch(n=1)
    features: dict = {}
    model.roi_heads.box_predictor.register_forward_hook(lambda _m, _i, out: features.update(out=out))
    with torch.no_grad():
        model(images)
    logits, deltas = features["out"]
    assert deltas.abs().max().item() < 0.05
    assert torch.softmax(logits, dim=1).max().item() < 0.6  # 3 classes (2 + background): uniform is 0.33
