"""The detector table is the one source: config, builder, prior counter, CLI choices and app labels read it."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet

from sfdeploy import config
from sfdeploy.models import build_model
from sfdeploy.models.table import DETECTOR_TABLE, DETECTORS, LABELS, detector_spec

KIND = {"retinanet": RetinaNet, "fcos": FCOS, "faster_rcnn": FasterRCNN, "mask_rcnn": MaskRCNN}


def test_config_names_are_derived_from_the_table() -> None:
    assert config.DETECTORS == DETECTORS == tuple(DETECTOR_TABLE)
    assert set(config.ONE_STAGE) | set(config.TWO_STAGE) == set(DETECTORS)
    assert all(DETECTOR_TABLE[d].two_stage for d in config.TWO_STAGE)
    assert not any(DETECTOR_TABLE[d].two_stage for d in config.ONE_STAGE)
    with pytest.raises(KeyError, match="known: retinanet"):
        detector_spec("yolo")


@pytest.mark.parametrize("detector", DETECTORS)
def test_each_row_builds_its_detector(tiny_cfg, detector) -> None:  # type: ignore[no-untyped-def]
    from sfdeploy.sampling_free.prior import _Counter

    spec = DETECTOR_TABLE[detector]
    cfg = tiny_cfg(detector, priors={spec.prior_heads[0]: 3e-3})
    assert (cfg.is_two_stage, cfg.has_masks, cfg.prior_heads) == (spec.two_stage, spec.has_masks, spec.prior_heads)
    torch.manual_seed(0)
    model = build_model(cfg, load_backbone_weights=False)
    assert isinstance(model, KIND[detector])
    assert isinstance(model, MaskRCNN) == spec.has_masks
    assert hasattr(model, "rpn") == spec.two_stage
    assert _Counter(cfg, model).kind == spec.matching


def test_cli_choices_and_app_labels_come_from_the_table() -> None:
    from sfdeploy.app.common import FAMILY_LABELS, FAMILY_ORDER
    from sfdeploy.sampling_free import prior_cli
    from sfdeploy.training import cli as train_cli

    assert FAMILY_LABELS == LABELS and FAMILY_ORDER == DETECTORS
    for register in (prior_cli.register, train_cli.register):
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers())
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for p in sub.choices.values():
            model = [a for a in p._actions if a.dest == "model" and a.choices]
            assert not model or tuple(model[0].choices) == DETECTORS


def test_config_import_stays_light() -> None:
    """`import sfdeploy.config` reads the table without importing torch (CLI start-up time)."""
    code = "import sys, sfdeploy.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
