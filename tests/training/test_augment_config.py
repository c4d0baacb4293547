"""`train --augment PRESET`: the preset drives the training transforms and is recorded in OUT/config.yaml."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import yaml

from sfdeploy.data.augment import V2Step
from sfdeploy.training.config import TrainConfig
from sfdeploy.training.data import train_transforms_for


def main(argv: list[str]) -> int:
    import sfdeploy.cli as cli

    with mock.patch.object(cli, "STAGE_MODULES", ("sfdeploy.training.cli",)):
        return cli.main(argv)


def test_preset_builds_v2_pipeline_and_none_keeps_the_old_one() -> None:
    strong = train_transforms_for(TrainConfig(augment="strong"))
    assert sum(isinstance(t, V2Step) for t in strong.transforms) == 3  # photometric, zoom-out+crop, flip
    legacy = train_transforms_for(TrainConfig())
    assert not any(isinstance(t, V2Step) for t in legacy.transforms)


def test_train_records_the_preset(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--model", "retinanet", "--backbone", "resnet18", "--fpn-channels", "32", "--image-size",
               "64", "--data", "synthetic:4", "--batch-size", "2", "--workers", "0", "--max-steps", "2",
               "--no-progress", "--augment", "strong", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert yaml.safe_load((out / "config.yaml").read_text())["augment"] == "strong"


def test_preset_and_legacy_flags_conflict(tmp_path: Path, capsys) -> None:
    rc = main(["train", "--data", "synthetic:4", "--augment", "default", "--no-hflip", "--out", str(tmp_path)])
    assert rc == 2 and "augment presets replace hflip/scale_jitter" in capsys.readouterr().err
