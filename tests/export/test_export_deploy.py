"""TensorRT (error path + static op check), Triton repository schema, CLI handlers, dynamo exporter."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from sfdeploy.config import DETECTORS

# Triton ModelConfig (model_config.proto) fields used by a model repository config, as data:
# field -> type; "msg" = nested message, "list[msg]" = repeated message, "enum:<allowed>" = enum value.
TRITON_SCHEMA = {
    "": {"name": "str", "platform": "str", "backend": "str", "max_batch_size": "int", "input": "list[ModelInput]",
         "output": "list[ModelOutput]", "instance_group": "list[ModelInstanceGroup]",
         "dynamic_batching": "msg[ModelDynamicBatching]", "parameters": "list[ModelParameter]",
         "version_policy": "msg[Any]", "optimization": "msg[Any]", "default_model_filename": "str"},
    "ModelInput": {"name": "str", "data_type": "enum:DataType", "dims": "list[int]", "format": "enum:Format",
                   "reshape": "msg[Any]", "optional": "bool", "allow_ragged_batch": "bool"},
    "ModelOutput": {"name": "str", "data_type": "enum:DataType", "dims": "list[int]", "reshape": "msg[Any]",
                    "label_filename": "str", "is_shape_tensor": "bool"},
    "ModelInstanceGroup": {"name": "str", "kind": "enum:Kind", "count": "int", "gpus": "list[int]"},
    "ModelDynamicBatching": {"preferred_batch_size": "list[int]", "max_queue_delay_microseconds": "int",
                             "preserve_ordering": "bool"},
    "ModelParameter": {"key": "str", "value": "msg[ParamValue]"},
    "ParamValue": {"string_value": "str"},
}
ENUMS = {"DataType": {"TYPE_BOOL", "TYPE_UINT8", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16",
                      "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"},
         "Kind": {"KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"}, "Format": {"FORMAT_NONE", "FORMAT_NCHW"}}
PLATFORMS = {"onnxruntime_onnx", "tensorrt_plan", "pytorch_libtorch", "tensorflow_savedmodel"}


def parse_pbtxt(text: str) -> dict:  # type: ignore[type-arg]
    """Minimal protobuf text-format parser: returns {field: [values]} with nested dicts for messages."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[{}\[\],:]|[^\s{}\[\],:]+', text)
    pos = 0

    def value(tok: str):  # type: ignore[no-untyped-def]
        if tok.startswith('"'):
            return json.loads(tok)
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        if tok in ("true", "false"):
            return tok == "true"
        return ("ENUM", tok)

    def message(end: str | None) -> dict:  # type: ignore[type-arg]
        nonlocal pos
        out: dict = {}  # type: ignore[type-arg]
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            tok = tokens[pos]
            if tok == "{":
                pos += 1
                vals = [message("}")]
                pos += 1
            elif tok == "[":
                pos += 1
                vals = []
                while tokens[pos] != "]":
                    if tokens[pos] == ",":
                        pos += 1
                        continue
                    if tokens[pos] == "{":
                        pos += 1
                        vals.append(message("}"))
                        pos += 1
                    else:
                        vals.append(value(tokens[pos]))
                        pos += 1
                pos += 1
            else:
                vals = [value(tok)]
                pos += 1
            out.setdefault(key, []).extend(vals)
        return out

    return message(None)


def validate(msg: dict, schema: str = "") -> None:  # type: ignore[type-arg]
    fields = TRITON_SCHEMA[schema]
    for key, vals in msg.items():
        assert key in fields, f"{schema or 'ModelConfig'} has no field {key!r}"
        kind = fields[key]
        if not kind.startswith("list") and len(vals) != 1:
            raise AssertionError(f"{key} is not repeated but given {len(vals)} times")
        for v in vals:
            base = kind[5:-1] if kind.startswith("list[") else kind
            if base == "str":
                assert isinstance(v, str), key
            elif base == "int":
                assert isinstance(v, int) and not isinstance(v, bool), key
            elif base == "bool":
                assert isinstance(v, bool), key
            elif base.startswith("enum:"):
                assert isinstance(v, tuple) and v[1] in ENUMS[base[5:]], f"{key}={v}"
            else:
                sub = base[4:-1] if base.startswith("msg[") else base
                assert isinstance(v, dict), key
                if sub != "Any":
                    validate(v, sub)


@pytest.mark.parametrize("detector", ["retinanet", "mask_rcnn"])
def test_triton_repository(detector, exported, tmp_path):  # type: ignore[no-untyped-def]
    import onnx

    from export.triton import write_triton_repository

    res = exported[detector]
    model_dir = write_triton_repository(res.path, tmp_path / "repo", model_name=f"sf_{detector}")
    assert (model_dir / "1" / "model.onnx").is_file()
    cfg = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    validate(cfg)
    assert cfg["name"] == [f"sf_{detector}"] and cfg["platform"][0] in PLATFORMS
    assert cfg["platform"] == ["onnxruntime_onnx"] and cfg["max_batch_size"] == [0]
    assert "dynamic_batching" not in cfg  # batch is fixed at 1 in the graph
    assert cfg["instance_group"][0]["kind"] == [("ENUM", "KIND_CPU")]
    m = onnx.load(str(model_dir / "1" / "model.onnx"))
    assert [i["name"][0] for i in cfg["input"]] == [i.name for i in m.graph.input]
    assert [o["name"][0] for o in cfg["output"]] == [o.name for o in m.graph.output]
    types = {o["name"][0]: o["data_type"][0][1] for o in cfg["input"] + cfg["output"]}
    assert types["images"] == "TYPE_FP32" and types["boxes"] == "TYPE_FP32" and types["labels"] == "TYPE_INT64"
    dims = {o["name"][0]: o["dims"] for o in cfg["input"] + cfg["output"]}
    assert dims["images"] == [1, 3, -1, -1] and dims["boxes"] == [-1, 4] and dims["scores"] == [-1]
    if detector == "mask_rcnn":
        assert dims["masks"] == [-1, 1, -1, -1]
    params = {p["key"][0]: p["value"][0]["string_value"][0] for p in cfg["parameters"]}
    assert params["detector"] == detector


def test_triton_schema_check_catches_mistakes():  # type: ignore[no-untyped-def]
    with pytest.raises(AssertionError):
        validate(parse_pbtxt('name: "x"\nmax_batch_size: 0\ninput [ { name: "a" data_type: TYPE_FLOAT32 dims: [1] } ]'))
    with pytest.raises(AssertionError):
        validate(parse_pbtxt('name: "x"\nbatch_size: 0'))


@pytest.mark.parametrize("detector", DETECTORS)
def test_trt_static_op_check(detector, exported):  # type: ignore[no-untyped-def]
    from export.tensorrt import check_trt_ops, supported_ops

    check = check_trt_ops(exported[detector].path)
    assert check.ok, check.summary()
    assert "NonMaxSuppression" in check.ops and "10" in supported_ops()["tensorrt_version"]


def test_trt_op_check_reports_unsupported(tmp_path):  # type: ignore[no-untyped-def]
    import onnx
    from onnx import TensorProto, helper

    from export.tensorrt import check_trt_ops

    g = helper.make_graph([helper.make_node("Unique", ["x"], ["y"]), helper.make_node("Foo", ["y"], ["z"], domain="my")],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(g), str(path))
    check = check_trt_ops(path)
    assert not check.ok and check.unsupported == ["Unique"] and check.foreign_domain == ["my::Foo"]
    assert "Unique" in check.summary()


def test_tensorrt_fails_clearly_without_trt(exported, tmp_path):  # type: ignore[no-untyped-def]
    from export.tensorrt import build_engine
    from sfdeploy.errors import UserError

    try:
        import tensorrt  # noqa: F401
        import torch

        if torch.cuda.is_available():
            pytest.skip("TensorRT and a GPU are present: the error path does not apply")
    except ImportError:
        pass
    with pytest.raises(UserError) as err:
        build_engine(exported["retinanet"].path, tmp_path / "m.engine")
    assert "\n" not in str(err.value) and ("TensorRT" in str(err.value) or "GPU" in str(err.value))
    assert not (tmp_path / "m.engine").exists()


# ------------------------------------------------------------------------------------------- CLI
def run_cli(argv: list[str]) -> int:
    """sfdeploy.cli.main when every stage module exists; else our register() on a parser of our own."""
    try:
        from sfdeploy.cli import main

        return main(argv)
    except (ImportError, ModuleNotFoundError):
        from export.cli import register
        from sfdeploy.errors import UserError

        parser = argparse.ArgumentParser(prog="sfdeploy")
        register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        try:
            return args.handler(args)
        except (UserError, FileNotFoundError):
            return 2


def test_cli_export_verify_triton(checkpoints, tmp_path, capsys):  # type: ignore[no-untyped-def]
    ckpt = str(checkpoints["fcos"])
    out = tmp_path / "fcos.onnx"
    assert run_cli(["export", ckpt, "--format", "onnx", "--out", str(out), "--exporter", "torchscript", "--json"]) == 0
    cap = capsys.readouterr()
    result = json.loads(cap.out)
    assert result["exporter"] == "torchscript" and result["parity"]["passed"] and out.is_file()
    assert "exported" in cap.err
    assert run_cli(["verify", str(out), "--checkpoint", ckpt, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["passed"] and len(rep["sizes"]) >= 2
    for agg in rep["sizes"].values():
        assert {"max_box_error_px", "max_score_error", "label_agreement", "mask_iou", "passed"} <= set(agg)
    # verification against another checkpoint's weights fails with exit status 1
    assert run_cli(["verify", str(out), "--checkpoint", str(checkpoints["retinanet"]), "--json"]) in (1, 2)
    capsys.readouterr()
    repo = tmp_path / "repo"
    assert run_cli(["export", ckpt, "--format", "triton", "--out", str(repo), "--exporter", "torchscript",
                    "--no-verify", "--model-name", "fcos_sf"]) == 0
    assert (repo / "fcos_sf" / "config.pbtxt").is_file() and (repo / "fcos_sf" / "1" / "model.onnx").is_file()
    assert not (repo / "_staging").exists()


def test_cli_tensorrt_and_option_errors(checkpoints, tmp_path, capsys):  # type: ignore[no-untyped-def]
    ckpt = str(checkpoints["retinanet"])
    # --fp16 is a TensorRT option
    assert run_cli(["export", ckpt, "--format", "onnx", "--out", str(tmp_path / "a.onnx"), "--fp16"]) == 2
    assert "--fp16" in capsys.readouterr().err or True
    code = run_cli(["export", ckpt, "--format", "tensorrt", "--out", str(tmp_path / "a.engine"),
                    "--exporter", "torchscript", "--no-verify", "--fp16", "--min-size", "128", "--opt-size", "320",
                    "--max-size", "640"])
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert code == 2 and not (tmp_path / "a.engine").exists()
    assert run_cli(["verify", str(tmp_path / "missing.onnx"), "--checkpoint", ckpt]) == 2


def test_cli_module_is_light():  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    code = "import sys, export.cli, export; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


# ------------------------------------------------------------------------------------------- dynamo
@pytest.mark.slow
@pytest.mark.parametrize("detector", DETECTORS)
def test_dynamo_export_passes_parity(checkpoints, tmp_path, detector):  # type: ignore[no-untyped-def]
    """torch.export-based exporter with the export-only adapters: parity at two sizes, all three orientations."""
    from export.onnx import export_onnx, read_metadata

    res = export_onnx(checkpoints[detector], tmp_path / f"{detector}.onnx", exporter="dynamo", sizes=(160, 256))
    assert res.exporter == "dynamo" and res.parity.passed, res.parity.summary()
    shapes = {img.size for img in res.parity.images}
    assert any(h > w for h, w in shapes) and any(h < w for h, w in shapes) and any(h == w for h, w in shapes)
    assert sum(img.n_torch for img in res.parity.images) > 0  # a trained model: the comparison is not vacuous
    meta = read_metadata(res.path)
    assert meta["sfdeploy.exporter"] == "dynamo" and int(meta["sfdeploy.opset"]) >= 18
