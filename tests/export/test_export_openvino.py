"""--format openvino and the openvino serving backend: parity with ONNX Runtime, bf16/int8 agreement, metadata,
atomic writes, errors. Skipped without the `openvino` extra (its pure-Python parts: tests/serving/
test_openvino_options.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from test_export_deploy import run_cli  # noqa: E402
from test_export_int8 import CALIB, TINY_MODEL_TOLERANCES  # noqa: E402

# OpenVINO f32 vs ONNX Runtime fp32 on the same graph, through the whole Predictor (original-image pixels)
PARITY = {"box_px": 1e-2, "score": 1e-4}


def _bf16_cpu() -> bool:
    from sfdeploy.export.openvino import bf16_available

    return bf16_available()


@pytest.fixture(scope="module")
def irs(exported, tmp_path_factory):  # type: ignore[no-untyped-def]
    """detector -> f32 IR converted from the exported fp32 graph (lazily)."""
    from sfdeploy.export.openvino import convert_onnx

    root = tmp_path_factory.mktemp("ov")

    class _Lazy(dict):  # type: ignore[type-arg]
        def __missing__(self, detector: str):  # type: ignore[no-untyped-def]
            self[detector] = convert_onnx(exported[detector].path, root / f"{detector}.xml")
            return self[detector]

    return _Lazy()


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_f32_matches_onnxruntime(detector, exported, irs):  # type: ignore[no-untyped-def]
    from sfdeploy.serving import load

    res = irs[detector]
    ovp, ortp = load(res.xml), load(exported[detector].path, backend="onnxruntime")
    assert ovp.backend == "openvino" and ovp.precision == "f32" and ovp.config == ortp.config
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((96, 128), (160, 120), (200, 200))]
    from sfdeploy.export.benchmark import _scene

    images.append((_scene(160).permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    for img in images:
        a, b = ovp.predict(img), ortp.predict(img)
        assert len(a) == len(b) > 0 and a.image_size == b.image_size
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.class_names == b.class_names
        np.testing.assert_allclose(a.scores, b.scores, atol=PARITY["score"])
        np.testing.assert_allclose(a.boxes, b.boxes, atol=PARITY["box_px"])
    assert ovp.info()["precision"] == "f32" and ovp.info()["source"] == res.xml.name


def test_metadata_round_trip(exported, irs):  # type: ignore[no-untyped-def]
    from sfdeploy.export.onnx import read_metadata
    from sfdeploy.serving.backends.openvino_runtime import read_rt_info

    res = irs["retinanet"]
    props = read_rt_info(ov.Core().read_model(str(res.xml)))
    onnx_props = read_metadata(exported["retinanet"].path)
    assert {k: props[k] for k in onnx_props} == onnx_props
    extra = json.loads(props["sfdeploy.openvino"])
    assert extra["precision"] == "f32" and extra["source_precision"] == "fp32" and extra["version"]


def test_bf16_agreement_or_clear_error(exported, irs):  # type: ignore[no-untyped-def]
    from sfdeploy.errors import UserError
    from sfdeploy.export.openvino import check_ir
    from sfdeploy.export.quantize import check_images
    from sfdeploy.serving import load

    xml = irs["retinanet"].xml
    if not _bf16_cpu():
        with pytest.raises(UserError, match="no native bf16"):
            load(xml, precision="bf16")
        return
    report = check_ir(exported["retinanet"].path, xml, check_images(None, sizes=(256,)), precision="bf16",
                      tolerances=TINY_MODEL_TOLERANCES)
    assert report.passed, report.summary()
    assert report.max_score_error > 1e-5  # really bf16: an f32 run would match to ~1e-6
    assert report.summary().startswith("openvino bf16 agreement PASSED")


def test_f32_check_catches_a_wrong_ir(exported, irs):  # type: ignore[no-untyped-def]
    """An IR of another model must fail the f32 check against the graph it claims to be."""
    from sfdeploy.export.openvino import check_ir
    from sfdeploy.export.quantize import check_images

    report = check_ir(exported["retinanet"].path, irs["fcos"].xml, check_images(None, sizes=(256,)))
    assert not report.passed and report.agreement < 1.0


def test_cli_openvino_export_and_predict(checkpoints, tmp_path, capsys):  # type: ignore[no-untyped-def]
    out = tmp_path / "r.xml"
    argv = ["export", str(checkpoints["retinanet"]), "--format", "openvino", "--out", str(out), "--exporter",
            "torchscript", "--json"]
    if _bf16_cpu():
        argv += ["--precision", "bf16"]
    assert run_cli(argv) == 0
    cap = capsys.readouterr()
    payload = json.loads(cap.out)
    assert payload["path"] == str(out) and payload["openvino"]["check"]["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.bin", "r.xml"]  # no staging ONNX, no temp files
    from sfdeploy.serving import load

    pred = load(out)  # the precision recorded at export is the default
    assert pred.precision == ("bf16" if _bf16_cpu() else "f32")
    pred.predict(np.full((64, 80, 3), 90, np.uint8))
    assert run_cli(["predict", str(out), str(Path(__file__).parents[2] / "sfdeploy/assets/example_1.png"),
                    "--json", "-"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)


def test_cli_openvino_int8(checkpoints, tmp_path, capsys):  # type: ignore[no-untyped-def]
    out = tmp_path / "q.xml"
    assert run_cli(["export", str(checkpoints["retinanet"]), "--format", "openvino", "--out", str(out), "--exporter",
                    "torchscript", "--int8", "--calib-data", CALIB, "--calib-images", "4", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["int8"]["agreement"]["passed"] and payload["openvino"]["source_precision"] == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.bin", "q.xml"]
    from sfdeploy.serving import load

    pred = load(out)
    assert pred.info()["precision"] == "int8"
    model = ov.Core().read_model(str(out))
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())  # QDQ pairs became int8 ops


def test_failed_save_keeps_the_old_ir(exported, irs, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    from sfdeploy.export.openvino import convert_onnx

    out = tmp_path / "m.xml"
    convert_onnx(exported["retinanet"].path, out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(model, path, compress_to_fp16=True):  # type: ignore[no-untyped-def]
        Path(path).write_text("<partial")
        Path(path).with_suffix(".bin").write_bytes(b"\0" * 10)
        raise RuntimeError("disk full")

    monkeypatch.setattr(ov, "save_model", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_onnx(exported["fcos"].path, out)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_bad_artefacts_are_one_line_errors(exported, irs, tmp_path):  # type: ignore[no-untyped-def]
    from sfdeploy.errors import UserError
    from sfdeploy.serving import load

    bad = tmp_path / "bad.xml"
    bad.write_text("<net><layers>")
    bad.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(UserError, match="not a loadable OpenVINO IR") as err:
        load(bad)
    assert "\n" not in str(err.value)
    lone = tmp_path / "lone.xml"
    lone.write_bytes(irs["retinanet"].xml.read_bytes())
    with pytest.raises(FileNotFoundError, match="lone.bin"):
        load(lone)
    # an IR converted by hand (no sfdeploy metadata)
    plain = tmp_path / "plain.xml"
    ov.save_model(ov.convert_model(str(exported["retinanet"].path)), str(plain))
    with pytest.raises(UserError, match="no 'sfdeploy.config' metadata"):
        load(plain)


def test_http_service_serves_the_ir(exported, irs):  # type: ignore[no-untyped-def]
    """/v1/models shows the openvino backend and its precision; /v1/detect answers as for the ONNX model."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from sfdeploy.serving import load
    from sfdeploy.serving.server import create_app

    img = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    client = TestClient(create_app({"ov": load(irs["retinanet"].xml),
                                    "ort": load(exported["retinanet"].path, backend="onnxruntime")}))
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["ov"]["backend"] == "openvino" and models["ov"]["precision"] == "f32"
    assert models["ort"]["precision"] is None
    got = {name: client.post("/v1/detect", params={"model": name},
                             files={"image": ("a.png", buf.getvalue(), "image/png")}) for name in ("ov", "ort")}
    assert all(r.status_code == 200 for r in got.values()), {k: r.text for k, r in got.items()}
    a, b = (got[n].json()["detections"] for n in ("ov", "ort"))
    assert len(a) == len(b) > 0 and [d["label"] for d in a] == [d["label"] for d in b]
    np.testing.assert_allclose([d["score"] for d in a], [d["score"] for d in b], atol=PARITY["score"])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_failed_check_keeps_the_old_ir(exported, tmp_path):  # type: ignore[no-untyped-def]
    """An IR that fails its check never replaces the old pair; it is kept beside it as a loadable pair."""
    from sfdeploy.export.openvino import export_openvino
    from sfdeploy.export.quant_check import AgreementError

    out = tmp_path / "m.xml"
    export_openvino(exported["retinanet"].path, out, verify=False)
    before = _files(tmp_path)
    with pytest.raises(AgreementError) as info:  # the fcos IR checked against the retinanet graph
        export_openvino(exported["retinanet"].path, out, source_onnx=exported["fcos"].path, calib=None)
    after = _files(tmp_path)
    assert {k: after.pop(k) for k in before} == before  # the old pair, byte for byte
    assert sorted(after) == ["m.parity-failed.bin", "m.parity-failed.xml"]  # no staging or temp files either
    assert info.value.report.quantized == str(tmp_path / "m.parity-failed.xml")
    assert ov.Core().read_model(str(tmp_path / "m.parity-failed.xml")) is not None


def test_failed_xml_rename_keeps_the_old_pair(exported, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """The .bin is renamed first: if the .xml rename then fails, the old .bin is put back (never old .xml with the
    new weights)."""
    import os

    from sfdeploy.export.openvino import export_openvino

    out = tmp_path / "m.xml"
    export_openvino(exported["retinanet"].path, out, verify=False)
    before = _files(tmp_path)
    real_replace = os.replace

    def replace(src, dst):  # type: ignore[no-untyped-def]
        if Path(dst) == out:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        export_openvino(exported["fcos"].path, out, verify=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert _files(tmp_path) == before


def test_killed_export_leaves_nothing_after_cleanup(exported, tmp_path):  # type: ignore[no-untyped-def]
    """SIGKILL while the IR is being written: the next export's cleanup (by the --out name) removes every temporary
    file, the weights-sized .bin included."""
    import os
    import subprocess
    import sys

    from sfdeploy.export.openvino import export_openvino
    from sfdeploy.io import remove_stale_temp_files

    out = tmp_path / "m.xml"
    export_openvino(exported["retinanet"].path, out, verify=False)
    before = _files(tmp_path)
    script = ("import os, signal, sys\nimport sfdeploy.io as io\nfrom sfdeploy.export.openvino import export_openvino\n"
              "io._commit = lambda tmp, path: os.kill(os.getpid(), signal.SIGKILL)\n"
              "export_openvino(sys.argv[1], sys.argv[2], verify=False)\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    proc = subprocess.run([sys.executable, "-c", script, str(exported["fcos"].path), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert {p.name for p in tmp_path.iterdir()} > set(before)  # killed mid-write: temporary files are there
    remove_stale_temp_files(tmp_path, name=out.name)  # what `sfdeploy export` runs first
    assert _files(tmp_path) == before


def test_cli_parity_failure_keeps_the_graph_beside_out(tmp_path, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    """The ONNX graph that failed parity on the way to an IR is kept as `<out>.parity-failed`, whatever --out is
    called (never as model.onnx.parity-failed, the name of a failed `--out model.onnx` export)."""
    import sfdeploy.export.onnx as onnx_export
    from sfdeploy.export.verify import ParityError, ParityReport

    def failing(checkpoint, path, **kwargs):  # type: ignore[no-untyped-def]
        Path(path).write_bytes(b"graph")
        raise ParityError(ParityReport(artefact=str(path), tolerances={}, images=[]))

    monkeypatch.setattr(onnx_export, "export_onnx", failing)
    out = tmp_path / "detector.xml"
    assert run_cli(["export", str(tmp_path / "m.pt"), "--format", "openvino", "--out", str(out)]) == 1
    assert _files(tmp_path) == {"detector.xml.parity-failed": b"graph"}
