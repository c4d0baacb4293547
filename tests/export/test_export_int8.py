"""INT8 static quantization (ONNX Runtime QDQ): what is quantized, what stays float, agreement with fp32, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CALIB = "synthetic:8"
TINY_MODEL_TOLERANCES = {"score": 0.2, "box_rel": 0.1}


@pytest.fixture(scope="module")
def quantized(exported, tmp_path_factory):  # type: ignore[no-untyped-def]
    """detector -> (fp32 path, int8 path, QuantizeResult), quantized lazily with 4 calibration images."""
    from sfdeploy.export.quantize import quantize_int8

    root = tmp_path_factory.mktemp("int8")

    class _Lazy(dict):  # type: ignore[type-arg]
        def __missing__(self, detector: str):  # type: ignore[no-untyped-def]
            fp32 = exported[detector].path
            res = quantize_int8(fp32, root / f"{detector}.int8.onnx", CALIB, calib_images=4)
            self[detector] = (fp32, res.path, res)
            return self[detector]

    return _Lazy()


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_int8_graph_quantizes_the_network_only(detector, quantized):  # type: ignore[no-untyped-def]
    import onnx

    fp32, int8, res = quantized[detector]
    m = onnx.load(str(int8))
    producers = {o: n for n in m.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    dq_of = {n.input[0]: n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    quants = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert res.quantized_nodes == len(quants) > 10
    for q in quants:  # every quantized tensor is a Conv/Gemm input or output, nothing of the post-processing
        made_by = producers[q.input[0]].op_type if q.input[0] in producers else "graph input"
        used_by = consumers.get(dq_of.get(q.output[0], ""), [])
        assert made_by in ("Conv", "Gemm") or {"Conv", "Gemm"} & set(used_by), (q.name, made_by, used_by)
    # post-processing is float: NMS reads float boxes/scores that no DequantizeLinear produces directly
    nms = [n for n in m.graph.node if n.op_type == "NonMaxSuppression"]
    assert nms and all(producers[n.input[0]].op_type != "DequantizeLinear" for n in nms if n.input[0] in producers)
    props = {p.key: p.value for p in m.metadata_props}
    fp32_props = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    assert props["sfdeploy.precision"] == "int8" and json.loads(props["sfdeploy.quantization"])["images"] == 4
    assert {k: props[k] for k in fp32_props} == fp32_props  # the fp32 metadata survives
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size  # int8 weights


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_int8_agrees_with_fp32_and_serves(detector, quantized):  # type: ignore[no-untyped-def]
    from sfdeploy.export.quant_check import check_agreement
    from sfdeploy.export.quantize import check_images
    from sfdeploy.serving import load

    fp32, int8, _ = quantized[detector]
    # 20-step models calibrated on 4 images: looser score/box bounds than the trained-model defaults, same agreement
    report = check_agreement(fp32, int8, check_images(None, sizes=(256,)), tolerances=TINY_MODEL_TOLERANCES)
    assert report.passed, report.summary()
    assert report.reference_detections >= 20 and report.agreement >= 0.9 and 0 < report.max_score_error
    pred = load(int8, backend="onnxruntime")
    det = pred.predict(np.zeros((96, 128, 3), dtype=np.uint8) + 120)
    assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32 and det.image_size == (96, 128)
    assert pred.metadata["raw"]["sfdeploy.precision"] == "int8"


def test_agreement_check_catches_a_wrong_graph(quantized):  # type: ignore[no-untyped-def]
    """fcos int8 vs retinanet fp32: different models must not pass the agreement check."""
    from sfdeploy.export.quant_check import check_agreement
    from sfdeploy.export.quantize import check_images

    report = check_agreement(quantized["retinanet"][0], quantized["fcos"][1], check_images(None, sizes=(256,)))
    assert not report.passed and report.agreement < 0.9 and "agreement" in report.summary()


def test_calibration_images_come_from_the_data():  # type: ignore[no-untyped-def]
    from sfdeploy.export.quantize import calibration_images

    imgs = calibration_images("synthetic:10", 4)
    assert len(imgs) == 4 and all(i.dtype == np.float32 and i.shape[:2] == (1, 3) for i in imgs)
    assert 0.0 <= min(float(i.min()) for i in imgs) and max(float(i.max()) for i in imgs) <= 1.0
    assert not np.array_equal(imgs[0], imgs[-1])


def test_cli_int8(checkpoints, tmp_path, capsys):  # type: ignore[no-untyped-def]
    from test_export_deploy import run_cli

    ckpt = str(checkpoints["retinanet"])
    out = tmp_path / "r.onnx"
    assert run_cli(["export", ckpt, "--out", str(out), "--exporter", "torchscript", "--int8", "--calib-data", CALIB,
                    "--calib-images", "4", "--json"]) == 0
    cap = capsys.readouterr()
    payload = json.loads(cap.out)
    assert payload["path"] == str(out) and payload["int8"]["agreement"]["passed"]
    assert "int8 agreement PASSED" in cap.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.onnx"]  # the fp32 intermediate is removed
    # option errors: one line, exit 2, nothing written
    for argv, words in ((["--int8"], "--calib-data"), (["--calib-data", CALIB], "--int8"),
                        (["--int8", "--calib-data", CALIB, "--format", "tensorrt"], "--int8")):
        assert run_cli(["export", ckpt, "--out", str(tmp_path / "x.onnx"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.onnx").exists()


def test_unknown_calibration_method_is_a_user_error(exported, tmp_path):  # type: ignore[no-untyped-def]
    from sfdeploy.export.quantize import quantize_int8
    from sfdeploy.errors import UserError

    with pytest.raises(UserError, match="calibration method"):
        quantize_int8(exported["retinanet"].path, tmp_path / "q.onnx", CALIB, calib_images=2, method="kl")
    assert not Path(tmp_path / "q.onnx").exists()


def test_calibration_images_resized_to_one_shape():  # type: ignore[no-untyped-def]
    """Histogram calibrators stack activations over images: they must all have one shape."""
    from sfdeploy.export.quantize import calibration_images

    assert {i.shape for i in calibration_images("synthetic:6", 3, size=64)} == {(1, 3, 64, 64)}


def test_two_stage_histogram_calibration_is_refused(tmp_path):  # type: ignore[no-untyped-def]
    """RoI heads see a different number of boxes per image: ORT's percentile calibrator would crash inside numpy
    (inhomogeneous shapes); a clear error instead, and auto picks minmax for two-stage detectors."""
    import onnx
    from onnx import TensorProto, helper

    from sfdeploy.export.quantize import quantize_int8
    from sfdeploy.errors import UserError

    g = helper.make_graph([helper.make_node("Identity", ["images"], ["scores"])], "g",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "h", "w"])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3, "h", "w"])])
    m = helper.make_model(g)
    m.metadata_props.add(key="detector", value="mask_rcnn")
    onnx.save(m, str(tmp_path / "m.onnx"))
    with pytest.raises(UserError, match="minmax"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", CALIB, calib_images=2, method="percentile")
    res = quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", CALIB, calib_images=2)  # auto
    assert res.calibration["method"] == "minmax"


def test_cli_int8_failing_agreement_keeps_the_old_file(checkpoints, tmp_path, capsys, monkeypatch):  # type: ignore[no-untyped-def]
    """The fp32 convention for int8: a failed agreement check leaves `--out` byte for byte, keeps the failed int8
    graph as `<out>.parity-failed` (Triton: next to the repository) and says where it is and what to try."""
    import sfdeploy.export.quant_check as qc
    from sfdeploy.export.onnx import read_metadata
    from test_export_deploy import run_cli

    real = qc.check_agreement
    checked: list[Path] = []

    def strict(fp32, quantized, images, **kw):  # type: ignore[no-untyped-def]  # a real report that cannot pass
        checked.append(Path(quantized))
        return real(fp32, quantized, images, tolerances={"agreement": 1.01})

    monkeypatch.setattr(qc, "check_agreement", strict)
    out = tmp_path / "r.onnx"
    out.write_bytes(b"the previous export")
    base = ["export", str(checkpoints["retinanet"]), "--exporter", "torchscript", "--int8", "--calib-data", CALIB,
            "--calib-images", "2"]
    assert run_cli(base + ["--out", str(out), "--json"]) == 1
    cap = capsys.readouterr()
    failed = tmp_path / "r.onnx.parity-failed"
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.onnx", "r.onnx.parity-failed"]
    assert read_metadata(failed)["sfdeploy.precision"] == "int8" and checked[-1].parent != tmp_path
    assert json.loads(cap.out)["quantized"] == str(failed) and "int8 agreement FAILED" in cap.err
    assert str(failed) in cap.err and "--calib-images" in cap.err and "without --int8" in cap.err, cap.err
    assert "Traceback" not in cap.err

    repo = tmp_path / "repo"
    assert run_cli(base + ["--format", "triton", "--out", str(repo)]) == 1
    assert not repo.exists() and read_metadata(tmp_path / "repo.parity-failed")["sfdeploy.precision"] == "int8"
    assert str(tmp_path / "repo.parity-failed") in capsys.readouterr().err


def test_agreement_matches_a_degenerate_box_found_again():  # type: ignore[no-untyped-def]
    """Zero-area boxes (IoU 0 with anything, themselves included) that another runtime returns unchanged are the
    same detection; a box elsewhere with the same label is not."""
    from sfdeploy.export.quant_check import match_top

    ref = {"boxes": np.array([[0, 11.3, 0, 19.06], [5, 5, 20, 20]], np.float32),
           "scores": np.array([0.5, 0.4], np.float32), "labels": np.array([3, 1])}
    got = {"boxes": np.array([[5, 5, 20, 20.001], [0, 11.300001, 0, 19.06]], np.float32),
           "scores": np.array([0.4, 0.5], np.float32), "labels": np.array([1, 3])}
    assert match_top(ref, got) == [(0, 1), (1, 0)]
    moved = {**got, "boxes": np.array([[5, 5, 20, 20], [0, 30, 0, 40]], np.float32)}
    assert match_top(ref, moved) == [(0, None), (1, 0)]
