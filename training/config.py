"""TrainConfig: a training run = a ModelConfig + data + schedule; YAML file plus command-line overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sfdeploy.config import ConfigError, ModelConfig, _from_dict

OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("off", "fp16", "bf16")
# The paper's settings at batch 16; scaled linearly with the batch size (Goyal et al.).
PAPER_LR = {"one_stage": 0.01, "two_stage": 0.02}
PAPER_BATCH = 16


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: str = "synthetic"
    val_data: str | None = None
    split: str = "train"
    val_split: str = "val"
    images_dir: str | None = None
    out: str = "runs/exp"
    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int = 4  # global batch: all ranks together (each of W ranks gets batch_size / W)
    optimizer: str = "sgd"
    lr: float | None = None  # None: paper lr scaled linearly from batch 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    warmup_factor: float = 1.0 / 3
    lr_steps: tuple[float, ...] = (2 / 3, 8 / 9)  # fractions of the run where lr drops x0.1 (1x schedule)
    grad_clip: float | None = None  # the authors (maskrcnn-benchmark) do not clip; clipping hits guided heads harder
    amp: str = "off"  # off | fp16 (CUDA) | bf16 (CUDA, or CPU); true/false in old configs mean fp16/off
    device: str = "auto"
    workers: int = 2
    # --- GPU (issue 16): speed switches and multi-GPU robustness ---
    dist_timeout_minutes: float = 60.0  # process-group timeout: rank 0 evaluates / estimates priors meanwhile
    cudnn_benchmark: bool = False  # autotune convolutions (pays off when image sizes repeat: fixed --image-size)
    tf32: bool = True  # TF32 matmuls/convolutions on Ampere+ (fp32 training ~ fp32 accuracy, several x faster)
    channels_last: bool = False  # NHWC convolutions (faster with AMP on tensor cores)
    compile: bool = False  # torch.compile the backbone (dynamic shapes); the first steps compile
    pin_memory: bool = True  # CUDA only
    persistent_workers: bool = True  # keep DataLoader workers between evaluations / epochs
    uint8_images: bool = True  # CUDA only: workers send uint8 images, the device converts (4x fewer bytes)
    seed: int = 0
    hflip: bool = True
    scale_jitter: tuple[float, float] | None = None
    eval_every: int | None = None  # steps; None: at the end only
    checkpoint_every: int = 200
    log_every: int = 10
    divergence_factor: float = 1e3  # loss > factor x its early median -> diverged
    divergence_window: int = 20  # the first N steps' losses define the "early median"
    resume: bool = False
    # --- extensions (training engineer) ---
    lr_decay: float = 0.1  # lr multiplier at each of lr_steps
    eval_batch_size: int = 2
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed
    prior_cache_dir: str | None = None  # None: estimate_priors' default cache
    plots: bool = True  # loss-dynamics PNGs at the end of the run
    # Bias parameters' lr = lr x this factor (maskrcnn-benchmark, the authors' code: 2; torchvision's recipes: 1).
    # Biases never get weight decay (nor norms nor the guides' scalars), which is also the authors' setting.
    bias_lr_factor: float = 1.0
    # --- data path (issue 14) ---
    val_images_dir: str | None = None  # image folder of a COCO --val-data (COCO-2017 layout); None: images_dir
    val_fraction: float | None = None  # hold out this fraction of `data` as validation set (when no val_data)
    split_seed: int = 0  # which images val_fraction holds out; apart from `seed` so seeds share one holdout
    # pretrained detection weights: a torchvision weights name, a .pth state dict or an sfdeploy checkpoint
    weights: str | None = None
    # augmentation preset none|flip|default|strong (torchvision.transforms.v2, sfdeploy.data.augment); None: the
    # earlier hand-written pipeline from hflip/scale_jitter, so older configs train exactly as before
    augment: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if isinstance(self.lr_steps, list):
            self.lr_steps = tuple(self.lr_steps)
        if isinstance(self.amp, bool) or self.amp is None:
            self.amp = "fp16" if self.amp else "off"
        if isinstance(self.scale_jitter, list):
            self.scale_jitter = tuple(self.scale_jitter)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if not self.dist_timeout_minutes > 0:
            raise ConfigError("dist_timeout_minutes must be > 0")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.max_steps is not None and self.epochs is not None:
            raise ConfigError("give either max_steps or epochs, not both")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        for name in ("max_steps", "epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if any(not 0.0 < f <= 1.0 for f in self.lr_steps) or list(self.lr_steps) != sorted(self.lr_steps):
            raise ConfigError(f"lr_steps must be increasing fractions of the run in (0, 1], got {list(self.lr_steps)}")
        for name in ("log_every", "checkpoint_every", "eval_batch_size", "divergence_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.eval_every is not None and self.eval_every < 1:
            raise ConfigError("eval_every must be >= 1 (or null: evaluate at the end only)")
        if not self.bias_lr_factor > 0:
            raise ConfigError(f"bias_lr_factor must be > 0, got {self.bias_lr_factor}")
        if self.warmup_steps < 0 or not 0.0 < self.warmup_factor <= 1.0:
            raise ConfigError("need warmup_steps >= 0 and 0 < warmup_factor <= 1")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError("grad_clip must be > 0 (or null: no clipping)")
        if not self.divergence_factor > 1.0:
            raise ConfigError("divergence_factor must be > 1")
        if self.workers < 0:
            raise ConfigError("workers must be >= 0")
        if self.seed < 0:
            raise ConfigError("seed must be >= 0")
        if self.val_fraction is not None:
            if not 0.0 < self.val_fraction < 1.0:
                raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
            if self.val_data:
                raise ConfigError("give either val_data (a separate validation set) or val_fraction (a holdout "
                                  "of the training data), not both")
        if self.val_images_dir is not None and not self.val_data:
            raise ConfigError("val_images_dir is the image folder of val_data: give val_data too")
        if self.augment is not None:
            from sfdeploy.data.augment import PRESETS

            if self.augment not in PRESETS:
                raise ConfigError(f"unknown augment preset {self.augment!r}: choose one of {', '.join(PRESETS)}")
            if self.scale_jitter is not None or not self.hflip:
                raise ConfigError("augment presets replace hflip/scale_jitter: give one or the other (augment: none "
                                  "is no flip)")
        if self.split_seed < 0:
            raise ConfigError("split_seed must be >= 0")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")

    @property
    def effective_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        base = PAPER_LR["two_stage" if self.model.is_two_stage else "one_stage"]
        return base * self.batch_size / PAPER_BATCH

    @property
    def image_size(self) -> int:
        return self.model.max_size

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lr_steps"] = list(self.lr_steps)
        if self.scale_jitter is not None:
            data["scale_jitter"] = list(self.scale_jitter)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return _from_dict(cls, data)

    @classmethod
    def from_yaml_file(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        from sfdeploy.config import load_yaml_file

        data = load_yaml_file(path)
        model = dict(data.pop("model", {}) or {})
        model.update(overrides.pop("model", {}) or {})
        data.update(overrides)
        data["model"] = ModelConfig.from_dict(model)
        return cls.from_dict(data)
