"""The OpenVINO format/backend's pure-Python parts: options, precision and device checks, metadata, errors.

None of these needs openvino installed (the missing-package case is simulated), so they run everywhere.
"""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, strategies as st

from sfdeploy.errors import UserError


@pytest.fixture
def no_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import openvino` fail as on an install without the extra."""
    monkeypatch.setitem(sys.modules, "openvino", None)


def test_xml_suffix_selects_the_openvino_backend(tmp_path):  # type: ignore[no-untyped-def]
    from sfdeploy.serving import BACKENDS, backend_for

    assert "openvino" in BACKENDS
    assert backend_for(tmp_path / "m.xml") == "openvino" and backend_for("M.XML", "openvino") == "openvino"
    with pytest.raises(UserError, match="runs .xml files"):
        backend_for("m.onnx", "openvino")
    with pytest.raises(UserError, match="runs on openvino"):
        backend_for("m.xml", "onnxruntime")


@pytest.mark.parametrize("precision,caps,ok", [
    ("f32", None, True), ("bf16", None, True), ("BF16", ["FP32", "BF16", "INT8"], True),
    ("f32", ["FP32", "INT8"], True), ("bf16", ["FP32", "INT8"], False)])
def test_precision_and_cpu_capability(precision, caps, ok):  # type: ignore[no-untyped-def]
    from sfdeploy.serving.backends.openvino_runtime import check_precision

    if ok:
        assert check_precision(precision, caps) == precision.lower()
    else:
        with pytest.raises(UserError, match="no native bf16") as err:
            check_precision(precision, caps)
        assert "\n" not in str(err.value)


@given(st.text(max_size=12).filter(lambda s: s.lower() not in ("f32", "bf16")))
def test_any_other_precision_is_one_line_error(text):  # type: ignore[no-untyped-def]
    from sfdeploy.serving.backends.openvino_runtime import check_precision

    with pytest.raises(UserError, match="unknown OpenVINO precision") as err:
        check_precision(text)
    assert "\n" not in str(err.value).replace(repr(text), "")


@pytest.mark.parametrize("device,ok", [(None, True), ("cpu", True), ("CPU", True), ("cuda", False), ("gpu", False)])
def test_cpu_only_device(device, ok):  # type: ignore[no-untyped-def]
    from sfdeploy.serving.backends.openvino_runtime import check_device

    if ok:
        assert check_device(device) == "CPU"
    else:
        with pytest.raises(UserError, match="CPU only"):
            check_device(device)


def test_metadata_carries_the_onnx_contract_plus_openvino(tiny_cfg):  # type: ignore[no-untyped-def]
    from sfdeploy.artefact import KEY_OPENVINO, build_metadata, openvino_metadata, parse_metadata

    onnx_props = build_metadata(tiny_cfg(), {"step": 3}, exporter="torchscript", opset=17, nms="onnx")
    props = openvino_metadata(onnx_props, {"version": "2026.4", "precision": "bf16", "source_precision": "fp32"})
    assert {k: props[k] for k in onnx_props} == onnx_props and set(props) - set(onnx_props) == {KEY_OPENVINO}
    md = parse_metadata(props)
    assert md["openvino"] == {"version": "2026.4", "precision": "bf16", "source_precision": "fp32"}
    assert md["detector"] == "retinanet" and md["meta"] == {"step": 3}
    assert parse_metadata(onnx_props)["openvino"] is None
    assert all(isinstance(v, str) for v in props.values()) and json.loads(props[KEY_OPENVINO])


def test_missing_openvino_is_one_line_error(no_openvino, tmp_path):  # type: ignore[no-untyped-def]
    from sfdeploy.serving import load

    xml = tmp_path / "m.xml"
    xml.write_text("<net/>")
    with pytest.raises(UserError, match=r"OpenVINO is not installed: pip install 'sfdeploy\[openvino\]'"):
        load(xml)
    with pytest.raises(UserError, match="unknown OpenVINO precision"):  # checked before the import
        load(xml, precision="fp8")
    with pytest.raises(UserError, match="CPU only"):
        load(xml, device="cuda")


def test_export_options(tmp_path, capsys):  # type: ignore[no-untyped-def]
    """--precision only with --format openvino; the IR's --out must be .xml; both fail at once (exit 2, one line)."""
    from sfdeploy.cli import main
    from sfdeploy.export.formats import FORMATS, check_options

    assert FORMATS["openvino"].suffix == ".xml" and "precision" in FORMATS["openvino"].options
    check_options("openvino", {"precision", "int8", "opset"})
    with pytest.raises(UserError, match="--format onnx does not take --precision"):
        check_options("onnx", {"precision"})
    ckpt = tmp_path / "missing.pt"  # never read: the option checks come first
    for argv, words in ((["--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--precision", "bf16"],
                         "does not take --precision"),
                        (["--format", "openvino", "--out", str(tmp_path / "m.onnx")], "must end in .xml"),
                        (["--format", "openvino", "--out", str(tmp_path / "m.xml"), "--fp16"],
                         "does not take --fp16")):
        assert main(["export", str(ckpt), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_no_openvino_fails_before_export(no_openvino, tmp_path, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    """A missing package is found by the option checks, not after minutes of ONNX export and calibration."""
    import sfdeploy.export.cli as export_cli
    from sfdeploy.cli import main

    def export_started(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the export started although openvino is missing")

    monkeypatch.setattr(export_cli, "_export_to", export_started)
    rc = main(["export", str(tmp_path / "m.pt"), "--format", "openvino", "--out", str(tmp_path / "m.xml")])
    assert rc != 0 and "OpenVINO is not installed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
