"""`export --batch dynamic`: batched one-stage graphs, per-image parity, the predictor's predict_batch, refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from sfdeploy import processing


@pytest.fixture(scope="module")
def batched(checkpoints, tmp_path_factory):  # type: ignore[no-untyped-def]
    """detector -> ExportResult of a verified --batch dynamic export (retinanet, fcos)."""
    from sfdeploy.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("batched")

    class _Lazy(dict):  # type: ignore[type-arg]
        def __missing__(self, detector: str):  # type: ignore[no-untyped-def]
            self[detector] = export_onnx(checkpoints[detector], root / f"{detector}.onnx", batch="dynamic")
            return self[detector]

    return _Lazy()


def _images() -> list[np.ndarray]:
    """Scenes of different sizes and shapes (square, portrait, landscape, a thin strip, a small one)."""
    from sfdeploy.data import build_dataset

    ds = build_dataset("synthetic:4", split="val", seed=0)
    a, b = ds.load_image(0), ds.load_image(1)
    return [a, np.ascontiguousarray(b[:, :150]), np.ascontiguousarray(a[:120]), np.ascontiguousarray(b[:20]),
            np.ascontiguousarray(b[::3, ::3])]


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_batched_export_parity_and_metadata(batched, detector):  # type: ignore[no-untyped-def]
    from sfdeploy.artefact import parse_metadata
    from sfdeploy.export.onnx import read_metadata

    res = batched[detector]
    assert res.parity is not None and res.parity.passed, res.parity.summary()
    # every parity image ran in one batch of mixed original sizes, with detections to compare
    assert all("in a batch of" in i.name for i in res.parity.images) and len(res.parity.images) >= 6
    assert sum(i.matched for i in res.parity.images) > 0
    md = parse_metadata(read_metadata(res.path))
    assert md["input"]["batch"] == "dynamic" and md["input"]["canvas"] == [128, 128]
    assert md["output_names"] == ["num_detections", "boxes", "scores", "labels"]
    assert md["outputs"][1]["shape"] == ["B", 100, 4]


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_batch_run_equals_single_runs(batched, detector):  # type: ignore[no-untyped-def]
    """Graph level: image i of one [B,...] run == the same image run alone (B = 1), within parity tolerances."""
    from sfdeploy.export.batched_verify import split_batched
    from sfdeploy.export.verify import TOLERANCES, compare_detections, ort_session

    sess = ort_session(batched[detector].path)
    preps = [processing.letterbox(im, (128, 128), (128, 128)) for im in _images()]
    names = [o.name for o in sess.get_outputs()]
    run = lambda x: split_batched(dict(zip(names, sess.run(None, {"images": x}))))  # noqa: E731
    together = run(np.concatenate([p.tensor for p in preps]))
    assert len(together) == len(preps)
    for i, p in enumerate(preps):
        alone = run(p.tensor)[0]
        res = compare_detections(f"img{i}", (128, 128), alone, together[i], 1e-3, 100, TOLERANCES)
        assert res.passed, res.reasons
        assert len(alone["scores"]) == len(together[i]["scores"])


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_predict_batch_equals_predict(batched, detector):  # type: ignore[no-untyped-def]
    from sfdeploy import serving

    p = serving.load(batched[detector].path)
    assert p.batched and p.canvas == (128, 128)
    images = _images()
    calls: list[int] = []
    infer = p._infer_batch
    p._infer_batch = lambda t: calls.append(len(t)) or infer(t)  # type: ignore[method-assign]
    together = p.predict_batch(images, max_batch=4)
    assert calls == [4, 1]  # one inference per chunk of max_batch images
    for image, got in zip(images, together):
        want = p.predict(image)
        assert got.image_size == image.shape[:2] == want.image_size
        assert len(got) == len(want) and np.array_equal(got.labels, want.labels)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=0.05)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-3)
        if len(got):  # boxes are in original-image pixels, inside the image
            assert got.boxes[:, 2].max() <= image.shape[1] and got.boxes[:, 3].max() <= image.shape[0]


def test_parity_check_catches_a_wrong_batched_graph(batched, checkpoints):  # type: ignore[no-untyped-def]
    """The batched check compares against the checkpoint: a model that differs from the graph fails it."""
    import torch

    from sfdeploy.checkpoint import load_model
    from sfdeploy.export.batched_verify import verify_batched

    model, ckpt = load_model(checkpoints["retinanet"])
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.classification_head.cls_logits.bias.add_(0.5)
    report = verify_batched(batched["retinanet"].path, other, ckpt.config, (128, 128), sizes=(128,))
    assert not report.passed and any("score" in r for i in report.images for r in i.reasons)


def test_cli_verify_batched_graph(batched, checkpoints, capsys):  # type: ignore[no-untyped-def]
    """`sfdeploy verify` recognises a batched graph from its metadata and runs the batched check."""
    from test_export_deploy import run_cli

    path = batched["fcos"].path
    capsys.readouterr()
    assert run_cli(["verify", str(path), "--checkpoint", str(checkpoints["fcos"]), "--sizes", "160", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and list(out["sizes"]) == ["128x128"]  # every image on the 128 px canvas


def test_two_stage_refused_with_one_line(tmp_path):  # type: ignore[no-untyped-def]
    from sfdeploy.config import ModelConfig
    from sfdeploy.errors import UserError
    from sfdeploy.export.onnx import export_onnx
    from sfdeploy.models import build_model

    cfg = ModelConfig(detector="faster_rcnn", method="sampling_free", backbone="resnet18", class_names=["a"],
                      min_size=64, max_size=64, fpn_channels=32)
    model = build_model(cfg, load_backbone_weights=False).eval()
    with pytest.raises(UserError, match="one-stage detectors") as exc:
        export_onnx(model, tmp_path / "f.onnx", config=cfg, batch="dynamic")
    assert "\n" not in str(exc.value) and not (tmp_path / "f.onnx").exists()


def test_cli_batch_option_errors(checkpoints, tmp_path, capsys):  # type: ignore[no-untyped-def]
    from test_export_deploy import run_cli

    ckpt = str(checkpoints["fcos"])
    capsys.readouterr()  # the fixture's training note
    cases = [
        (["--batch", "dynamic", "--format", "tensorrt"], "--batch"),
        (["--batch", "dynamic", "--int8", "--calib-data", "synthetic:8"], "--int8"),
        (["--format", "triton", "--max-batch-size", "4"], "--batch dynamic"),
        (["--max-queue-delay-us", "10"], "--max-queue-delay-us"),
    ]
    for extra, needle in cases:
        out = tmp_path / "x.onnx"
        assert run_cli(["export", ckpt, "--out", str(out), *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
        assert not out.exists()


def test_cli_batched_triton_repository(checkpoints, tmp_path, capsys):  # type: ignore[no-untyped-def]
    """--format triton --batch dynamic: max_batch_size and the dynamic batcher's delay as given, Triton's schema."""
    from test_export_deploy import run_cli
    from test_export_triton import parse_config

    repo = tmp_path / "repo"
    assert run_cli(["export", str(checkpoints["fcos"]), "--format", "triton", "--out", str(repo), "--batch",
                    "dynamic", "--no-verify", "--max-batch-size", "16", "--max-queue-delay-us", "2500"]) == 0
    capsys.readouterr()
    cfg = parse_config(repo / "fcos_sampling_free" / "config.pbtxt")
    assert cfg.max_batch_size == 16 and cfg.dynamic_batching.max_queue_delay_microseconds == 2500
    dims = {t.name: list(t.dims) for t in list(cfg.input) + list(cfg.output)}
    assert dims == {"images": [3, -1, -1], "num_detections": [1], "boxes": [100, 4], "scores": [100],
                    "labels": [100]}
    nd = next(o for o in cfg.output if o.name == "num_detections")
    assert nd.HasField("reshape") and list(nd.reshape.shape) == []  # the graph's [B] output
    params = {p: cfg.parameters[p].string_value for p in cfg.parameters}
    assert json.loads(params["sfdeploy.input"])["batch"] == "dynamic"
    assert Path(repo / "fcos_sampling_free" / "1" / "model.onnx").is_file()
