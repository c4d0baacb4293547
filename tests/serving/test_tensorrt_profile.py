"""TensorRT serving without TensorRT: a fake engine/context that enforces its optimisation profile like the real one
(set_input_shape returns False outside it, execute_async_v3 then fails) checks that the predictor fits every image
into the profile read from the sidecar and checks every TensorRT return value."""

from __future__ import annotations

import contextlib
import json
import types

import numpy as np
import pytest
import torch

from sfdeploy.serving.backends.tensorrt_backend import TensorRTPredictor
from sfdeploy.serving.backends.trt_runtime import (DEFAULT_PROFILE, Profile, TensorRTCallError, execute, fit_to_profile)
from sfdeploy.serving.predictor import Predictor, build_metadata_props, parse_metadata
from serving_helpers import tiny_config


class FakeContext:
    """Mimics IExecutionContext: shapes outside [min, max] are rejected with False, as TensorRT does."""

    def __init__(self, profile: Profile, allocator: "FakeAllocator") -> None:
        self.profile, self.allocator = profile, allocator
        self.shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}
        self.shapes_seen: list[tuple[int, ...]] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        ok = all(self.profile.min <= d <= self.profile.max for d in shape[2:])
        self.shape = shape if ok else None
        return ok

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        if self.shape is None:
            return False
        self.shapes_seen.append(self.shape)
        h, w = self.shape[2:]
        # one detection covering the whole input
        for name, value in {"boxes": np.array([[0, 0, w, h]], np.float32), "scores": np.array([0.9], np.float32),
                            "labels": np.array([1], np.int64)}.items():
            raw = torch.from_numpy(value.view(np.uint8).reshape(-1).copy())
            self.allocator.buffers[name] = raw
            self.allocator.shapes[name] = value.shape
        return True


class FakeAllocator:
    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def address(self, name: str) -> int:
        return 1


class _TorchOnCpu:
    """torch, with torch.cuda.device a no-op so the backend's CUDA scoping runs on the CPU."""

    cuda = types.SimpleNamespace(device=lambda device: contextlib.nullcontext())

    def __getattr__(self, name: str):
        return getattr(torch, name)


def fake_predictor(profile: Profile) -> tuple[TensorRTPredictor, FakeContext]:
    cfg = tiny_config("retinanet")
    props = build_metadata_props(cfg, {}, exporter="torchscript")
    props["sfdeploy.tensorrt"] = json.dumps({"profile": {"min": profile.min, "opt": profile.opt,
                                                         "max": profile.max}})
    p = TensorRTPredictor.__new__(TensorRTPredictor)
    p.profile = Profile.from_sidecar(props)  # what __init__ reads before the base class's
    Predictor.__init__(p, cfg, parse_metadata(props), source="fake.engine", device="cpu")
    p.allocator = FakeAllocator()
    p.context = FakeContext(p.profile, p.allocator)
    p.engine = types.SimpleNamespace(get_tensor_dtype=lambda name: {"boxes": np.float32, "scores": np.float32,
                                                                   "labels": np.int64}[name])
    p._trt = types.SimpleNamespace(nptype=lambda dt: dt)
    p._torch = _TorchOnCpu()
    p.stream = types.SimpleNamespace(cuda_stream=0, synchronize=lambda: None)
    p.input_name, p.output_names = "images", ["boxes", "scores", "labels"]
    return p, p.context


OLD_DEFAULT = Profile(128, 640, 1333)


@pytest.mark.parametrize("hw", [(1080, 1920), (60, 1000), (40, 50), (3000, 200), (128, 1333)])
def test_any_photo_fits_the_profile_and_maps_back(hw):
    pred, ctx = fake_predictor(OLD_DEFAULT)
    image = np.zeros((*hw, 3), np.uint8)
    det = pred.predict_image(image, score_thresh=0.0)
    h, w = ctx.shapes_seen[-1][2:]
    assert OLD_DEFAULT.min <= min(h, w) and max(h, w) <= OLD_DEFAULT.max
    assert det.image_size == hw and len(det) == 1
    # the fake box covers the (padded) input; clipped and mapped back it lies inside the original image
    x0, y0, x1, y1 = det.boxes[0]
    assert x0 >= 0 and y0 >= 0 and x1 <= hw[1] + 1e-3 and y1 <= hw[0] + 1e-3


def test_sidecar_profile_and_legacy_default():
    assert Profile.from_sidecar({"sfdeploy.tensorrt": json.dumps({"profile": {"min": 64, "opt": 512, "max": 1024}})}) \
        == Profile(64, 512, 1024)
    assert Profile.from_sidecar({}) == OLD_DEFAULT  # engines built before the profile was written there
    with pytest.raises(ValueError):
        Profile.from_sidecar({"sfdeploy.tensorrt": json.dumps({"profile": {"min": 900, "opt": 512, "max": 1024}})})


def test_default_profile_covers_what_the_predictor_sends():
    from sfdeploy.processing import DEFAULT_MAX_SIDE

    assert DEFAULT_PROFILE["max"] >= DEFAULT_MAX_SIDE and DEFAULT_PROFILE["min"] <= 32


def test_fit_to_profile_pads_bottom_right_only():
    x = np.ones((1, 3, 20, 200), np.float32)
    y = fit_to_profile(x, Profile(32, 64, 256))
    assert y.shape == (1, 3, 32, 200) and np.array_equal(y[:, :, :20], x) and not y[:, :, 20:].any()
    assert fit_to_profile(x, Profile(16, 64, 256)) is x
    with pytest.raises(ValueError, match="max side 128"):
        fit_to_profile(x, Profile(16, 64, 128))


def test_every_return_value_is_checked():
    calls = []

    class Ctx:
        def __init__(self, fail: str) -> None:
            self.fail = fail

        def _r(self, name):
            calls.append(name)
            return name != self.fail

        def set_input_shape(self, n, s):
            return self._r("set_input_shape")

        def set_tensor_address(self, n, a):
            return self._r(f"set_tensor_address:{n}")

        def execute_async_v3(self, s):
            return self._r("execute_async_v3")

    for fail, match in [("set_input_shape", "set_input_shape"), ("set_tensor_address:images", r"images\)"),
                        ("set_tensor_address:scores", r"scores\)"), ("execute_async_v3", "execute_async_v3")]:
        calls.clear()
        with pytest.raises(TensorRTCallError, match=match):
            execute(Ctx(fail), "images", (1, 3, 64, 64), 1, ["boxes", "scores"], lambda n: 2, 0)
        assert calls[-1] == fail  # nothing runs after a failed call
    execute(Ctx("none"), "images", (1, 3, 64, 64), 1, ["boxes", "scores"], lambda n: 2, 0)


def test_fp16_build_mode_follows_the_tensorrt_major_version():
    from sfdeploy.export.tensorrt import fp16_mode

    trt10 = types.SimpleNamespace(BuilderFlag=types.SimpleNamespace(FP16=1, REFIT=2))
    trt11 = types.SimpleNamespace(BuilderFlag=types.SimpleNamespace(REFIT=2))  # FP16 removed in 11
    assert fp16_mode(trt10) == "flag" and fp16_mode(trt11) == "strongly_typed"
