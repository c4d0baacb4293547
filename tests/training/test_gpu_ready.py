"""GPU-readiness that a CPU can check: rank-aware devices, the process group's timeout and device_id, SyncBatchNorm,
fp32 anchors/boxes under bf16 autocast, bf16 AMP training, and no per-step host syncs."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FrozenBatchNorm2d

import sfdeploy.training.distributed as D
from sfdeploy.config import ConfigError
from sfdeploy.models.precision import Fp32AnchorGenerator, Fp32BoxCoder, keep_geometry_fp32
from sfdeploy.training.metrics_log import read_metrics
from sfdeploy.training.trainer import train

from test_train import tiny_cfg

TORCHRUN_RANK1 = D.DistInfo(rank=1, world_size=2, local_rank=1, backend="nccl")


def test_torchrun_ranks_each_get_their_own_gpu():
    for asked in ("cuda", "cuda:0", "auto"):  # the old code put every rank given cuda:0 on GPU 0
        assert D.rank_device(asked, TORCHRUN_RANK1, cuda_available=True) == torch.device("cuda", 1)
    main = D.DistInfo(rank=0, world_size=2, local_rank=0)
    with pytest.warns(RuntimeWarning, match="LOCAL_RANK"):
        assert D.rank_device("cuda:3", main, cuda_available=True) == torch.device("cuda", 0)
    single = D.DistInfo()
    assert D.rank_device("cuda:2", single, cuda_available=True) == torch.device("cuda", 2)
    assert D.rank_device("auto", single, cuda_available=False) == torch.device("cpu")
    with pytest.raises(ConfigError):
        D.rank_device("cuda", single, cuda_available=False)


def test_process_group_gets_a_timeout_and_nccl_its_device(monkeypatch):
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(D.dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: seen.setdefault("set_device", i))
    info = D.init_from_env("cuda", timeout_minutes=90)
    assert info.backend == "nccl" and info.local_rank == 1 and seen["set_device"] == 1
    assert seen["timeout"] == timedelta(minutes=90) and seen["device_id"] == torch.device("cuda", 1)
    seen.clear()
    D.init_from_env("cpu")
    assert seen["backend"] == "gloo" and seen["timeout"] == timedelta(minutes=60) and "device_id" not in seen


def test_sync_batchnorm_only_for_trained_bn_on_several_cuda_ranks():
    frozen_affine = torch.nn.BatchNorm2d(4)
    frozen_affine.requires_grad_(False)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), FrozenBatchNorm2d(4), frozen_affine)
    assert D.sync_batchnorm(model, D.DistInfo(), torch.device("cuda", 0)) == 0  # one rank: nothing to sync
    assert D.sync_batchnorm(model, TORCHRUN_RANK1, torch.device("cpu")) == 0  # gloo/CPU: SyncBatchNorm needs CUDA
    assert D.sync_batchnorm(model, TORCHRUN_RANK1, torch.device("cuda", 1)) == 1
    assert [type(m).__name__ for m in model] == ["Conv2d", "SyncBatchNorm", "FrozenBatchNorm2d", "BatchNorm2d"]


def test_bf16_anchors_and_decoding_stay_fp32():
    """At 800x1344, bf16 anchors are off by pixels; the wrapped generator and coder match fp32 exactly."""
    gen = AnchorGenerator(((32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 3)
    images = ImageList(torch.zeros(1, 3, 800, 1344), [(800, 1344)])
    shapes = [(100, 168), (50, 84), (25, 42)]
    maps32 = [torch.zeros(1, 8, *s) for s in shapes]
    ref = gen(images, maps32)[0]
    bf = gen(images, [m.bfloat16() for m in maps32])[0]
    assert bf.dtype == torch.bfloat16 and (bf.float() - ref).abs().max() > 2.0  # what goes wrong without the fix
    fixed = Fp32AnchorGenerator(gen)(images, [m.bfloat16() for m in maps32])[0]
    assert fixed.dtype == torch.float32 and torch.equal(fixed, ref) and Fp32AnchorGenerator(gen).sizes == gen.sizes

    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    rel = (torch.randn(ref.shape[0], 4, generator=torch.Generator().manual_seed(0)) * 0.3).bfloat16()
    exact = coder.decode_single(rel.float(), ref)
    assert (coder.decode_single(rel, ref).float() - exact).abs().max() > 2.0
    assert torch.equal(Fp32BoxCoder(coder).decode_single(rel, ref), exact)


def test_keep_geometry_fp32_wraps_a_detector_without_changing_its_state_dict():
    from sfdeploy.config import ModelConfig
    from sfdeploy.models import build_model

    for det in ("retinanet", "faster_rcnn"):
        model = build_model(ModelConfig(detector=det, backbone="resnet18", fpn_channels=32, min_size=64, max_size=64,
                                        class_names=["a"]), load_backbone_weights=False)
        keys = list(model.state_dict())
        assert keep_geometry_fp32(model) >= 2
        assert list(model.state_dict()) == keys
        assert not any(isinstance(m, AnchorGenerator) and not isinstance(p, Fp32AnchorGenerator)
                       for p in model.modules() for m in p.children())


def test_bf16_amp_trains_on_cpu(tmp_path):
    r = train(tiny_cfg(tmp_path / "bf16", amp="bf16", max_steps=2, priors={"cls": 1e-2}), progress=False)
    assert r.outcome == "completed" and r.steps == 2
    start = [x for x in read_metrics(tmp_path / "bf16" / "metrics.jsonl") if x["event"] == "start"][0]
    assert start["amp"] == "bf16" and start["fp32_geometry"] >= 2
    assert all(torch.isfinite(torch.tensor(v)) for v in r.last_losses.values())


def test_values_are_read_on_logging_steps_only_and_a_nan_between_reads_is_caught(tmp_path, monkeypatch):
    from sfdeploy.checkpoint import load_checkpoint
    from sfdeploy.sampling_free.heads import SFRetinaNetHead

    reads = []
    original_avg = D.average_floats
    monkeypatch.setattr(D, "average_floats", lambda info, values, device: reads.append(1) or
                        original_avg(info, values, device))
    kw = dict(max_steps=10, log_every=5, checkpoint_every=100, divergence_window=1, priors={"cls": 1e-2})
    r = train(tiny_cfg(tmp_path / "ok", **kw), progress=False)
    assert r.outcome == "completed" and len(reads) == 3  # steps 1 (early window), 5 and 10; not all 10
    assert [x["step"] for x in read_metrics(tmp_path / "ok" / "metrics.jsonl") if x["event"] == "train"] == [1, 5, 10]

    original = SFRetinaNetHead.compute_loss
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        losses = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 7:
            losses["bbox_regression"] = losses["bbox_regression"] * float("nan")
        return losses

    monkeypatch.setattr(SFRetinaNetHead, "compute_loss", poisoned)
    r = train(tiny_cfg(tmp_path / "nan", **kw), progress=False)
    assert r.outcome == "diverged" and r.diverged_step == 7 and r.diverged_term == "bbox_regression"
    ckpt = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert ckpt.meta["step"] == 0 and ckpt.meta["diverged_step"] == 7
    assert all(torch.isfinite(v).all() for v in ckpt.state_dict.values() if v.is_floating_point())


def test_uint8_images_round_trip_within_half_a_level():
    from sfdeploy.training.gpu import Uint8Images, image_to_device

    image = torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(0))
    data = Uint8Images([(image, {"boxes": torch.zeros(0, 4)})])
    sent, target = data[0]
    assert sent.dtype == torch.uint8 and target["boxes"].shape == (0, 4)
    back = image_to_device(sent, torch.device("cpu"))
    assert back.dtype == torch.float32 and (back - image).abs().max() <= 0.5 / 255 + 1e-7
    assert torch.equal(image_to_device(image, torch.device("cpu")), image)  # float images pass unchanged


def test_amp_modes():
    from sfdeploy.training.config import TrainConfig
    from sfdeploy.training.gpu import amp_dtype

    cpu = torch.device("cpu")
    assert amp_dtype("off", cpu) is None and amp_dtype("fp16", cpu) is None and amp_dtype("bf16", cpu) is torch.bfloat16
    assert TrainConfig(amp=True).amp == "fp16" and TrainConfig(amp=False).amp == "off"  # old configs still load
    with pytest.raises(ConfigError, match="amp"):
        TrainConfig(amp="fp8")
