"""Export pieces for GPU deployment that a CPU can check: the dummy input follows the model's device, and the
Triton instance kind (ONNX on GPU = KIND_GPU)."""

from __future__ import annotations

import pytest
import torch

from sfdeploy.errors import UserError


def test_dummy_input_is_made_on_the_models_device():
    from sfdeploy.export.onnx import DUMMY_HW, example_input, model_device

    model = torch.nn.Conv2d(3, 4, 3).to("meta")  # stands in for a CUDA model on a CPU-only machine
    x = example_input(model)
    assert model_device(model).type == "meta" and x.device.type == "meta" and tuple(x.shape) == (1, 3, *DUMMY_HW)
    cpu = example_input(torch.nn.Conv2d(3, 4, 3))
    assert cpu.device.type == "cpu" and torch.equal(cpu, example_input(torch.nn.Conv2d(3, 4, 3)))  # reproducible


def _tiny_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "H", "W"])
    outs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("labels", TensorProto.INT64, None)]
    nodes = [helper.make_node("Identity", ["images"], ["boxes"]), helper.make_node("Identity", ["images"], ["scores"]),
             helper.make_node("Cast", ["images"], ["labels"], to=TensorProto.INT64)]
    model = helper.make_model(helper.make_graph(nodes, "g", [images], outs), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("kind,expected", [("auto", "KIND_CPU"), ("cpu", "KIND_CPU"), ("gpu", "KIND_GPU")])
def test_triton_onnx_instance_kind(tmp_path, kind, expected):
    from sfdeploy.export.triton import write_triton_repository

    model_dir = write_triton_repository(_tiny_onnx(tmp_path / "m.onnx"), tmp_path / "repo", model_name="m",
                                        instance_kind=kind)
    text = (model_dir / "config.pbtxt").read_text()
    assert f"kind: {expected}" in text and 'platform: "onnxruntime_onnx"' in text
