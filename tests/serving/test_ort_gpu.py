"""ONNX Runtime on GPU without a GPU: one ORT wheel per install (package metadata), the CUDA-missing warning,
provider options (device_id, TensorRT cache/profile), and the install hint when ORT is absent."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from sfdeploy.serving.backends.onnxruntime_backend import choose_providers
from sfdeploy.serving.backends.ort_providers import device_id, with_options
from sfdeploy.errors import UserError
from sfdeploy.ort import import_onnxruntime, warn_if_no_cuda

ORT_WHEELS = {"onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"}
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _requirements(project: dict, extras: tuple[str, ...]) -> set[str]:
    """Distribution names installed by `pip install sfdeploy[extras]` (self-references resolved)."""
    names: set[str] = set()
    todo, seen = list(extras), set()
    reqs = list(project["dependencies"])
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        reqs += project["optional-dependencies"][extra]
    for r in reqs:
        name = re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-")
        m = re.match(r"sfdeploy\[([^\]]+)\]", r)
        if m:
            names |= _requirements(project, tuple(e.strip() for e in m.group(1).split(",")))
        else:
            names.add(name)
    return names


def test_each_install_gets_at_most_one_onnxruntime_wheel():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = list(project["optional-dependencies"])
    for extra in [None, *extras]:
        wheels = _requirements(project, (extra,) if extra else ()) & ORT_WHEELS
        assert len(wheels) <= 1, f"sfdeploy[{extra}] installs {sorted(wheels)}"
    assert _requirements(project, ("gpu",)) & ORT_WHEELS == {"onnxruntime-gpu"}
    assert _requirements(project, ("dev",)) & ORT_WHEELS == {"onnxruntime"}  # CI (pip install -e .[dev])


def test_gpu_asked_without_cuda_provider_warns_and_falls_back():
    with pytest.warns(RuntimeWarning, match="no CUDAExecutionProvider"):
        assert choose_providers(["CPUExecutionProvider"], device="cuda:1") == ["CPUExecutionProvider"]
    assert not warn_if_no_cuda("cpu", ["CPUExecutionProvider"])
    assert not warn_if_no_cuda("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_provider_options_carry_the_device_and_tensorrt_settings(tmp_path):
    assert device_id("cuda:3") == 3 and device_id("cuda") == 0 and device_id(None) == 0
    with pytest.raises(UserError):
        device_id("cuda:x")
    opts = with_options(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "cuda:2",
                        trt_cache_dir=tmp_path / "cache", trt_fp16=True, trt_profile={"min": 32, "opt": 640, "max": 1333})
    (trt_name, trt), (cuda_name, cuda), cpu = opts
    assert cuda == {"device_id": 2} and cpu == "CPUExecutionProvider"
    assert trt["device_id"] == 2 and trt["trt_fp16_enable"] is True and trt["trt_engine_cache_enable"] is True
    assert trt["trt_profile_max_shapes"] == "images:1x3x1333x1333" and (tmp_path / "cache").is_dir()


def test_missing_onnxruntime_is_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(UserError, match=r"sfdeploy\[cpu\].*sfdeploy\[gpu\]"):
        import_onnxruntime()
