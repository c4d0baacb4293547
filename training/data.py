"""The data sets of a training run, from its TrainConfig: the training set (all of `data`, or its training part
under `val_fraction`), the validation set (`val_data` with its own image folder, or the held-out part) and the
set prior estimation reads (the training images only, so held-out boxes do not leak into the priors)."""

from __future__ import annotations

from sfdeploy.data import DetectionDataset, build_dataset, train_transforms
from sfdeploy.data.base import Transform
from sfdeploy.data.split import SubsetDataset, holdout_split

from .config import TrainConfig


def _holdout(cfg: TrainConfig, transforms: Transform | None,
             with_masks: bool | None) -> tuple[SubsetDataset, SubsetDataset]:
    assert cfg.val_fraction is not None
    full = build_dataset(cfg.data, split=cfg.split, images_dir=cfg.images_dir, seed=cfg.seed, with_masks=with_masks)
    return holdout_split(full, cfg.val_fraction, cfg.split_seed, train_transforms=transforms)


def train_dataset(cfg: TrainConfig, *, transforms: Transform | None = None,
                  with_masks: bool | None = None) -> DetectionDataset:
    """The images training reads (and prior estimation, with transforms=None)."""
    if cfg.val_fraction is not None:
        return _holdout(cfg, transforms, with_masks)[0]
    return build_dataset(cfg.data, split=cfg.split, images_dir=cfg.images_dir, seed=cfg.seed,
                         transforms=transforms, with_masks=with_masks)


def val_dataset(cfg: TrainConfig, *, with_masks: bool | None = None) -> DetectionDataset | None:
    """The validation set, or None when the run has none."""
    if cfg.val_fraction is not None:
        return _holdout(cfg, None, with_masks)[1]
    if not cfg.val_data:
        return None
    return build_dataset(cfg.val_data, split=cfg.val_split, images_dir=cfg.val_images_dir or cfg.images_dir,
                         seed=cfg.seed, transforms=None, with_masks=with_masks)


def train_transforms_for(cfg: TrainConfig) -> Transform:
    """The run's training augmentation: its ``augment`` preset, or the hand-written flip/scale-jitter pipeline."""
    size = (cfg.model.min_size, cfg.model.max_size)
    if cfg.augment is None:
        return train_transforms(*size, flip=cfg.hflip, scale_jitter=cfg.scale_jitter)
    from sfdeploy.data.augment import preset_transforms

    return preset_transforms(cfg.augment, *size)
