"""`train --weights SOURCE`: partial loading of torchvision detection weights, local state dicts and sfdeploy
checkpoints. Tests never download: they build torchvision models locally and save their state dicts."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path
from unittest import mock

import pytest
import torch
from torchvision.models import detection

from sfdeploy.checkpoint import save_checkpoint
from sfdeploy.config import ModelConfig
from sfdeploy.errors import UserError
from sfdeploy.models import build_model
from sfdeploy.models.pretrained import load_pretrained, torchvision_weights
from sfdeploy.sampling_free.losses import prior_to_bias

CLASS_LAYER = "class-count layer: re-initialised for this data's classes"


def _tv_state_dict(tmp_path: Path, builder) -> Path:  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    model = builder(weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path / "tv.pth"
    torch.save(model.state_dict(), path)
    return path


def test_torchvision_retinanet_v2_loads_all_but_the_class_layer_and_p6(tmp_path: Path) -> None:
    source = _tv_state_dict(tmp_path, detection.retinanet_resnet50_fpn_v2)
    cfg = ModelConfig(detector="retinanet", backbone="resnet50", class_names=["a", "b", "c"], priors={"cls": 1e-4})
    model = build_model(cfg, load_backbone_weights=False)
    report = load_pretrained(model, cfg, str(source))
    assert report.skipped == {
        "head.classification_head.cls_logits.weight": CLASS_LAYER,
        "head.classification_head.cls_logits.bias": CLASS_LAYER,
        # torchvision's v2 computes P6 from C5 (2048 channels), ours from P5
        "backbone.fpn.extra_blocks.p6.weight": "shape (256, 2048, 3, 3) in the source, (256, 256, 3, 3) here",
        # the guided loss scaling's weights and state (the default frozen form: sigma, g, step count)
        "head.guide.sigma": "not in the source",
        "head.guide.g": "not in the source",
        "head.guide.steps": "not in the source",
    }
    assert len(report.loaded) == 359 and report.unused == []
    theirs = torch.load(source, weights_only=True)
    ours = model.state_dict()
    for key in report.loaded:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)
    bias = ours["head.classification_head.cls_logits.bias"]
    torch.testing.assert_close(bias, torch.full_like(bias, prior_to_bias(1e-4)))


def test_torchvision_faster_rcnn_resets_the_rpn_bias_to_the_prior(tmp_path: Path) -> None:
    source = _tv_state_dict(tmp_path, detection.fasterrcnn_resnet50_fpn)
    cfg = ModelConfig(detector="faster_rcnn", backbone="resnet50", class_names=["a", "b"], priors={"rpn": 2e-4})
    model = build_model(cfg, load_backbone_weights=False)
    report = load_pretrained(model, cfg, str(source))
    assert {k for k, why in report.skipped.items() if why == CLASS_LAYER} == {
        "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"}
    assert len(report.loaded) == 344 and report.reinitialised == ["rpn.head.cls_logits.bias"]
    theirs = torch.load(source, weights_only=True)
    ours = model.state_dict()
    torch.testing.assert_close(ours["rpn.head.cls_logits.weight"], theirs["rpn.head.cls_logits.weight"])
    bias = ours["rpn.head.cls_logits.bias"]
    torch.testing.assert_close(bias, torch.full_like(bias, prior_to_bias(2e-4)))


def _tiny(classes: list[str], **kw) -> ModelConfig:  # type: ignore[no-untyped-def]
    return ModelConfig(detector="retinanet", backbone="resnet18", fpn_channels=32, min_size=64, max_size=64,
                       class_names=classes, **kw)


def test_sfdeploy_checkpoint_same_classes_loads_everything_new_classes_reinitialise(tmp_path: Path) -> None:
    old_cfg = _tiny(["x", "y"], priors={"cls": 1e-3})
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "old.pt", build_model(old_cfg, load_backbone_weights=False), old_cfg)
    same = build_model(old_cfg, load_backbone_weights=False)
    report = load_pretrained(same, old_cfg, str(path))
    assert report.kind == "sfdeploy" and report.skipped == {} and report.reinitialised == []
    new_cfg = _tiny(["x", "y", "z"], priors={"cls": 1e-3})
    report = load_pretrained(build_model(new_cfg, load_backbone_weights=False), new_cfg, str(path))
    assert set(report.skipped) == {"head.classification_head.cls_logits.weight",
                                   "head.classification_head.cls_logits.bias"}


def test_wrapped_state_dict_is_found(tmp_path: Path) -> None:
    cfg = _tiny(["x"])
    model = build_model(cfg, load_backbone_weights=False)
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    report = load_pretrained(build_model(cfg, load_backbone_weights=False), cfg, str(tmp_path / "wrapped.pth"))
    assert report.kind == "state_dict" and len(report.loaded) == len(model.state_dict()) - 2


@pytest.mark.parametrize("source,match", [
    ("no_such_weights", "not a file and not a torchvision weights name"),
    ("missing/file.pth", "file not found"),
])
def test_unknown_source_is_a_user_error(source: str, match: str) -> None:
    cfg = _tiny(["x"])
    with pytest.raises(UserError, match=match):
        load_pretrained(build_model(cfg, load_backbone_weights=False), cfg, source)


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    cfg = _tiny(["x"])
    with pytest.raises(UserError, match="none of its 1 tensors fits this retinanet/resnet18 model"):
        load_pretrained(build_model(cfg, load_backbone_weights=False), cfg, str(tmp_path / "other.pth"))


def test_torchvision_names_resolve_and_offline_says_what_to_do() -> None:
    assert torchvision_weights("FasterRCNN_ResNet50_FPN_Weights.COCO_V1") is not None
    assert torchvision_weights("fcos_resnet50_fpn") is detection.FCOS_ResNet50_FPN_Weights.DEFAULT
    cfg = _tiny(["x"])
    offline = urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    with mock.patch.object(detection.FCOS_ResNet50_FPN_Weights.COCO_V1.__class__, "get_state_dict",
                           side_effect=offline):
        with pytest.raises(UserError, match=r"cannot download https://.*Offline\? .*--weights FILE\.pth"):
            load_pretrained(build_model(cfg, load_backbone_weights=False), cfg, "fcos_resnet50_fpn")


def test_train_cli_fine_tunes_a_checkpoint_on_new_classes(tmp_path: Path, capsys) -> None:
    import sfdeploy.cli as cli

    old_cfg = _tiny(["circle"], priors={"cls": 1e-3})
    source = save_checkpoint(tmp_path / "old.pt", build_model(old_cfg, load_backbone_weights=False), old_cfg)
    out = tmp_path / "run"
    argv = ["train", "--model", "retinanet", "--backbone", "resnet18", "--fpn-channels", "32", "--image-size", "64",
            "--data", "synthetic:4", "--batch-size", "2", "--workers", "0", "--max-steps", "1", "--no-progress",
            "--weights", str(source), "--out", str(out)]
    with mock.patch.object(cli, "STAGE_MODULES", ("sfdeploy.training.cli",)):
        rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"weights {source}: loaded" in err
    record = json.loads((out / "weights.json").read_text())
    assert record["kind"] == "sfdeploy" and set(record["skipped"]) == {
        "head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"}


# -- --backbone-weights imagenet for torchvision backbones: torchvision's weights API, never downloaded here ------
def test_backbone_imagenet_uses_torchvision_weights_api(tmp_path: Path) -> None:
    from torchvision.models import ResNet18_Weights, resnet18

    from sfdeploy.models.backbones import build_fpn_backbone

    torch.manual_seed(3)
    local = resnet18(weights=None).state_dict()  # what the weights API would return, built here
    with mock.patch.object(ResNet18_Weights, "get_state_dict", return_value=local) as api:
        backbone = build_fpn_backbone("resnet18", two_stage=False, fpn_channels=32, weights="imagenet")
    assert api.called
    body = backbone.body
    torch.testing.assert_close(body.layer4[1].conv2.weight, local["layer4.1.conv2.weight"])


def test_backbone_imagenet_offline_says_what_to_do() -> None:
    from torchvision.models import ResNet18_Weights

    from sfdeploy.models.backbones import BackboneError, build_fpn_backbone

    offline = urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    with mock.patch.object(ResNet18_Weights, "get_state_dict", side_effect=offline):
        with pytest.raises(BackboneError, match=r"resnet18 from https://.*Offline\? .*--backbone-weights FILE\.pth"):
            build_fpn_backbone("resnet18", two_stage=False, fpn_channels=32, weights="imagenet")
