"""The demo's pure functions: discovery/pairing, inference once + re-render by threshold, inputs, CLI."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("sfdeploy.serving")

from sfdeploy.app.catalog import (Artifact, backend_choices, discover, find_model_files,  # noqa: E402
                                  pair_artifacts)
from sfdeploy.app.common import ROLES  # noqa: E402
from sfdeploy.app.inference import count_above, run_pair  # noqa: E402
from sfdeploy.app.inputs import BadImage, example_images, load_input, raw_upload_path  # noqa: E402
from sfdeploy.app.job import QuickstartJob  # noqa: E402
from sfdeploy.app.launch import parse_args  # noqa: E402
from sfdeploy.app.render import metrics_rows, render  # noqa: E402
from sfdeploy.app.store import ModelStore, default_loader  # noqa: E402
from sfdeploy.app.ui import build_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class CountingLoader:
    """serving.load, with every predictor's predict() counted."""

    def __init__(self) -> None:
        self.predict_calls = 0

    def __call__(self, path, backend):  # noqa: ANN001, ANN204
        predictor = default_loader(path, backend)
        original = predictor.predict

        def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.predict_calls += 1
            return original(*args, **kwargs)

        predictor.predict = counted
        return predictor


@pytest.fixture(scope="module")
def catalog_and_store(tiny_models):  # noqa: ANN001, ANN201
    loader = CountingLoader()
    store = ModelStore(loader=loader, warmup=False)
    return discover(tiny_models, store), store, loader


def test_find_model_files_prefers_best_over_last(tiny_models: Path) -> None:
    found = {str(p.relative_to(tiny_models)) for p in find_model_files(tiny_models)}
    assert found == {"pair/retinanet_baseline/best.pt", "pair/retinanet_sf/best.pt", "fcos_sf/last.pt",
                     "broken/last.pt"}
    assert find_model_files(tiny_models / "missing") == []


def test_discovery_groups_by_family_and_pairs_methods(catalog_and_store) -> None:  # noqa: ANN001
    catalog, _, _ = catalog_and_store
    assert list(catalog.families) == ["retinanet", "fcos"]  # paper order, only families found
    retina = catalog.families["retinanet"]
    assert retina.sides["baseline"]["torch"].method == "baseline"
    assert retina.sides["sampling_free"]["torch"].method == "sampling_free"
    assert retina.sides["baseline"]["torch"].name == str(Path("pair") / "retinanet_baseline" / "best.pt")
    assert retina.backends == ["torch"]
    fcos = catalog.families["fcos"]
    assert fcos.sides["baseline"] == {} and "torch" in fcos.sides["sampling_free"]
    # the corrupt file is reported, not fatal
    assert len(catalog.skipped) == 1 and catalog.skipped[0].startswith(str(Path("broken") / "last.pt"))


def test_pairing_prefers_same_backbone_and_newest() -> None:
    def art(method: str, backbone: str, mtime: float, backend: str = "torch") -> Artifact:
        return Artifact(path=Path(f"/x/{method}_{backbone}_{mtime}.pt"), backend=backend, detector="fcos",
                            method=method, backbone=backbone, class_names=["a"], score_thresh=0.05, mtime=mtime)

    fams = pair_artifacts([art("baseline", "resnet50", 5), art("baseline", "resnet18", 1),
                               art("sampling_free", "resnet18", 3), art("sampling_free", "resnet18", 4, "onnxruntime"),
                               art("ce", "resnet18", 9)])
    fam = fams["fcos"]
    assert fam.sides["sampling_free"]["torch"].mtime == 3
    assert fam.sides["sampling_free"]["onnxruntime"].mtime == 4
    assert fam.sides["baseline"]["torch"].backbone == "resnet18"  # matches the Sampling-Free run, not newest
    assert fam.backends == ["torch", "onnxruntime"]
    # "ce" stands in for the baseline only when there is none
    only_ce = pair_artifacts([art("ce", "resnet18", 1), art("sampling_free", "resnet18", 2)])["fcos"]
    assert only_ce.sides["baseline"]["torch"].method == "ce"


def test_backend_choices_explain_what_is_missing(catalog_and_store) -> None:  # noqa: ANN001
    catalog, _, _ = catalog_and_store
    choices, note = backend_choices(catalog.families["retinanet"])
    assert choices == [("PyTorch", "torch")]
    assert "ONNX Runtime unavailable" in note and "TensorRT unavailable" in note
    _, note = backend_choices(catalog.families["fcos"])
    assert "no Baseline file" in note


def test_threshold_rerender_does_not_run_the_models(catalog_and_store) -> None:  # noqa: ANN001
    catalog, store, loader = catalog_and_store
    image, note = load_input(example_images()[0])
    assert image.dtype == np.uint8 and image.ndim == 3 and note == ""
    before = loader.predict_calls
    raw = run_pair(store, catalog.families["retinanet"], "torch", image)
    assert loader.predict_calls == before + 2  # one call per panel
    panels = raw["panels"]
    for role in ROLES:
        assert panels[role]["error"] is None and panels[role]["latency_ms"] > 0
    assert panels["baseline"]["floor"] == pytest.approx(0.005)
    assert panels["sampling_free"]["floor"] == pytest.approx(0.001)

    counts = []
    for thr in (0.0, 0.01, 0.0199, 0.5, 0.99):
        img_b, cap_b, img_s, cap_s, pair = render(raw, thr, thr)
        assert img_b.shape == image.shape and img_s.shape == image.shape and pair is not None
        counts.append(count_above(panels["sampling_free"]["detections"], max(thr, 0.001)))
        assert f"**{counts[-1]}** detection" in cap_s and "ms" in cap_s
    assert loader.predict_calls == before + 2  # sliders never re-ran a model
    assert counts[0] > 0 and counts == sorted(counts, reverse=True) and counts[-1] == 0
    img_b, _, img_s, _, _ = render(raw, 0.0, 0.0)
    assert (img_s != image).any() and (img_b != image).any()  # boxes drawn
    img_b, _, img_s, _, _ = render(raw, 0.99, 0.99)
    assert np.array_equal(img_s, image)  # everything filtered out: the input, unchanged


def test_missing_side_is_a_panel_message(catalog_and_store) -> None:  # noqa: ANN001
    catalog, store, _ = catalog_and_store
    image = np.full((64, 80, 3), 127, np.uint8)
    raw = run_pair(store, catalog.families["fcos"], "torch", image)
    img_b, cap_b, img_s, cap_s, pair = render(raw, 0.0, 0.0)
    assert img_b is None and "no Baseline model for FCOS" in cap_b
    assert img_s is not None and pair is None
    raw = run_pair(store, catalog.families["retinanet"], "onnxruntime", image)
    assert "no Baseline ONNX Runtime file" in raw["panels"]["baseline"]["error"]


def test_metrics_table_from_metadata(catalog_and_store) -> None:  # noqa: ANN001
    catalog, _, _ = catalog_and_store
    rows = {r[0]: r[1:] for r in metrics_rows(catalog.families["retinanet"])}
    assert rows["bbox AP"] == ["0.100", "0.200"] and rows["bbox AP50"] == ["0.300", "0.300"]
    assert rows["score threshold"] == ["0.005", "0.001"] and rows["file"][0].endswith("best.pt")
    rows = {r[0]: r[1:] for r in metrics_rows(catalog.families["fcos"])}
    assert rows["bbox AP"] == ["—", "0.200"]
    assert metrics_rows(None) == []


def test_bad_uploads_raise_friendly_errors(tmp_path: Path) -> None:
    from PIL import Image

    cases = {"text.png": b"hello, not an image", "empty.jpg": b"",
             "truncated.png": _png_bytes(Image.new("RGB", (64, 64), "red"))[:60]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadImage) as err:
            load_input(tmp_path / name)
        assert "\n" not in str(err.value) and str(err.value)
    big = tmp_path / "big.png"  # 8000 x 6000 = 48 MP > the demo's 40 MP (a few KB on disk)
    Image.new("L", (8000, 6000)).save(big)
    with pytest.raises(BadImage, match="over the limit"):
        load_input(big)
    with pytest.raises(BadImage):
        load_input(tmp_path / "never-uploaded.png")
    wide = tmp_path / "wide.png"
    Image.new("RGB", (2560, 640), "blue").save(wide)
    image, note = load_input(wide)
    assert image.shape == (320, 1280, 3) and "downscaled from 2560x640" in note


def test_build_app_without_models_explains_quickstart(tmp_path: Path) -> None:
    for allow_train in (False, True):
        demo = build_app(tmp_path / "nothing-here", store=ModelStore(warmup=False), allow_train=allow_train)
        config = demo.get_config_file()
        texts = " ".join(str(c.get("props", {}).get("value", "")) for c in config["components"])
        assert "sfdeploy quickstart --out" in texts and "does not exist yet" in texts
        assert ("--allow-train" in texts) is not allow_train
        labels = [c.get("props", {}).get("value") for c in config["components"] if c.get("type") == "button"]
        assert ("Train the tiny built-in pair here" in labels) is allow_train


def test_build_app_with_models(tiny_models: Path, catalog_and_store) -> None:  # noqa: ANN001
    _, store, _ = catalog_and_store
    demo = build_app(tiny_models, store=store)
    config = demo.get_config_file()
    by_id = {c.get("props", {}).get("elem_id"): c for c in config["components"]}
    assert by_id["family"]["props"]["value"] == "retinanet"
    assert [tuple(c) for c in by_id["family"]["props"]["choices"]] == [("RetinaNet", "retinanet"), ("FCOS", "fcos")]
    assert by_id["backend"]["props"]["value"] == "torch"
    assert by_id["panel-baseline"]["props"]["format"] == "png"
    assert by_id["thresh-sampling-free"]["props"]["value"] == pytest.approx(0.001)
    assert by_id["thresh-baseline"]["props"]["value"] == pytest.approx(0.005)
    assert by_id["compare"]["type"] in ("imageslider", "gallery")
    assert by_id["input-image"]["type"] == "image"


def test_quickstart_job_runs_the_pipeline_in_background(tmp_path: Path, monkeypatch,
                                                        checkpoint_factory) -> None:  # noqa: ANN001
    """Progress comes from the pipeline's stage callback (nothing parses stderr, and stderr is left alone)."""
    calls = []

    def fake_quickstart(out, model="retinanet", fast=False, progress=None, on_stage=None):  # noqa: ANN001, ANN202
        calls.append((Path(out), model, fast, progress))
        print("[quickstart] stage 4/5: a stderr line is not progress", file=sys.stderr)
        assert job.fraction == 0.0 and job.message == "starting"
        on_stage(3, 5, "exporting")
        assert job.fraction == pytest.approx(0.4) and job.message == "stage 3/5: exporting"
        assert sys.stderr is stderr  # no tee
        checkpoint_factory(Path(out) / "retinanet_sampling_free" / "last.pt", "retinanet", "sampling_free")

    import sfdeploy.app.quickstart as tq

    monkeypatch.setattr(tq, "quickstart", fake_quickstart)
    job = QuickstartJob()
    stderr = sys.stderr
    assert job.start(tmp_path, model="fcos", fast=True)
    assert not job.start(tmp_path) or not job.running  # one at a time
    job.thread.join(timeout=120)
    assert job.done and job.error is None and "Trained" in job.status()
    assert calls == [(tmp_path, "fcos", True, False)]
    assert job.fraction == 1.0
    catalog = discover(tmp_path, ModelStore(warmup=False))
    assert list(catalog.families) == ["retinanet"]

    def failing(out, **kwargs):  # noqa: ANN001, ANN003, ANN202
        raise RuntimeError("no data\nsecond line")

    monkeypatch.setattr(tq, "quickstart", failing)
    job = QuickstartJob()
    job.start(tmp_path)
    job.thread.join(timeout=30)
    assert job.error == "no data" and "failed" in job.status()


def test_demo_cli_registers_and_stays_light() -> None:
    import argparse

    from sfdeploy import demo_cli

    parser = argparse.ArgumentParser()
    demo_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--models", "m", "--port", "7999"])
    assert args.handler is demo_cli.run and args.models == "m" and args.port == 7999 and args.host == "127.0.0.1"
    assert args.allow_train is False and parser.parse_args(["demo", "--allow-train"]).allow_train is True
    code = ("import sys, sfdeploy.demo_cli; heavy = [m for m in ('torch', 'gradio', 'app', 'sfdeploy.serving') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_main_parses_flags() -> None:
    args = parse_args(["--models", "d", "--port", "8000", "--share", "false", "--host", "0.0.0.0"])
    assert (args.models, args.port, args.share, args.host) == ("d", 8000, False, "0.0.0.0")
    assert parse_args(["--share", "true"]).share is True
    assert parse_args([]).share is False
    assert parse_args([]).allow_train is False and parse_args(["--allow-train"]).allow_train is True


def _png_bytes(image) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_import_app_is_light() -> None:
    t0 = time.perf_counter()
    code = "import sys, app; print([m for m in ('torch', 'gradio', 'sfdeploy.serving') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    assert time.perf_counter() - t0 < 30


def test_raw_upload_path_never_decodes(tmp_path: Path) -> None:
    import base64
    from types import SimpleNamespace

    assert raw_upload_path(None) is None
    assert raw_upload_path(SimpleNamespace(url=None, path="/x/y.png")) == "/x/y.png"
    url = "data:image/png;base64," + base64.b64encode(b"corrupt bytes").decode()
    data = raw_upload_path(SimpleNamespace(url=url, path=None))
    assert data == b"corrupt bytes"  # decoded in memory: no temp file
    with pytest.raises(BadImage, match="not an image"):
        load_input(data)
    assert not (ROOT / "app.pyi").exists()  # no gradio Component subclass in app.py (gradio would write a stub)
