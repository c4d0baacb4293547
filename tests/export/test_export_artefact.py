"""One artefact contract: an ONNX export, its TensorRT sidecar and its Triton config carry identical metadata."""

from __future__ import annotations

import json
import re

import pytest


def _triton_parameters(text: str) -> dict[str, str]:
    pattern = r'parameters \{\n  key: "([^"]+)"\n  value: \{\n    string_value: ("(?:[^"\\]|\\.)*")\n  \}\n\}'
    return {k: json.loads(v) for k, v in re.findall(pattern, text)}


@pytest.mark.parametrize("detector", ["retinanet"])
def test_onnx_tensorrt_triton_carry_identical_metadata(detector, checkpoints, exported, tmp_path):  # type: ignore[no-untyped-def]
    from sfdeploy.export.onnx import read_metadata
    from sfdeploy.export.tensorrt import write_sidecar
    from sfdeploy.export.triton import write_triton_repository
    from sfdeploy import artefact
    from sfdeploy.checkpoint import load_checkpoint

    res = exported[detector]
    onnx_props = read_metadata(res.path)
    ckpt = load_checkpoint(checkpoints[detector])
    built = artefact.build_metadata(ckpt.config, ckpt.meta, exporter=res.exporter, opset=res.opset,
                                    nms=onnx_props["sfdeploy.nms"])
    assert onnx_props == built  # the export writes exactly what the one builder makes from the checkpoint

    trt_info = {"version": "test", "fp16": False, "precision": "fp32", "profile": {"min": 32, "opt": 640, "max": 2048}}
    sidecar = json.loads(write_sidecar(tmp_path / "m.engine.json", res.path, trt_info).read_text())
    assert json.loads(sidecar.pop("sfdeploy.tensorrt")) == trt_info
    assert sidecar == onnx_props

    model_dir = write_triton_repository(res.path, tmp_path / "repo", model_name="m")
    assert _triton_parameters((model_dir / "config.pbtxt").read_text()) == onnx_props

    parsed = artefact.parse_metadata(onnx_props)
    assert parsed["input"]["batch"] == 1 and all(isinstance(o, dict) for o in parsed["outputs"])
    assert artefact.config_from_metadata(parsed, "m.onnx") == ckpt.config
