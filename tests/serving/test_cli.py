"""`sfdeploy predict` / `bench` handlers through serving.cli.register on a fresh parser."""

from __future__ import annotations

import argparse
import json

import pytest

from sfdeploy.serving import cli as serving_cli

from serving_helpers import synthetic_image, write_jpeg


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sfdeploy")
    sub = p.add_subparsers(dest="command", required=True)
    serving_cli.register(sub)
    return p


def test_cli_module_is_light():
    import subprocess
    import sys

    code = ("import sys, sfdeploy.serving.cli; heavy=[m for m in ('torch','onnxruntime','fastapi') if m in sys.modules];"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_predict_folder_with_corrupt_file(artefacts, tmp_path, capsys):
    _, onnx_path = artefacts.get("mask_rcnn")
    folder = tmp_path / "images"
    write_jpeg(folder / "a.jpg", synthetic_image(0))
    write_jpeg(folder / "b.jpg", synthetic_image(1)[:, :200])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out" / "results.json"
    render = tmp_path / "render"
    args = parser().parse_args(["predict", str(onnx_path), str(folder), str(tmp_path / "none*.png"),
                                "--json", str(out), "--render", str(render), "--threshold", "0.0"])
    assert args.handler(args) == serving_cli.EXIT_SKIPPED
    results = json.loads(out.read_text())
    index = json.loads((out.parent / "results.images.json").read_text())
    names = {im["id"]: im["file_name"] for im in index["images"]}
    assert sorted(n.split("/")[-1] for n in names.values()) == ["a.jpg", "b.jpg"]
    assert any("broken.jpg" in s["file"] for s in index["skipped"])
    assert results and {r["image_id"] for r in results} <= set(names)
    assert all("segmentation" in r and r["file_name"] == names[r["image_id"]] for r in results)
    assert sorted(p.name for p in render.iterdir()) == ["a.jpg", "b.jpg"]
    assert "broken.jpg" in capsys.readouterr().err


def test_predict_all_good_exit_zero_and_stdout(artefacts, tmp_path, capsys):
    _, onnx_path = artefacts.get("retinanet")
    path = write_jpeg(tmp_path / "x.jpg", synthetic_image(2))
    args = parser().parse_args(["predict", str(onnx_path), str(path), "--json", "-"])
    assert args.handler(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert isinstance(results, list) and all(r["image_id"] == 1 for r in results)


def test_predict_no_inputs_is_user_error(artefacts, tmp_path):
    from sfdeploy.errors import UserError

    args = parser().parse_args(["predict", str(artefacts.get("retinanet")[1]), str(tmp_path / "missing")])
    with pytest.raises(UserError):
        args.handler(args)


def test_bench_json_and_table(artefacts, capsys):
    ckpt, onnx_path = artefacts.get("retinanet")
    args = parser().parse_args(["bench", str(ckpt), str(onnx_path), "--sizes", "128", "--batch", "1,2",
                                "--runs", "2", "--warmup", "1", "--json", "--data", "synthetic:3"])
    assert args.handler(args) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [(r["backend"], r["batch"]) for r in rows] == [("torch", 1), ("torch", 2), ("onnxruntime", 1),
                                                          ("onnxruntime", 2)]
    assert all(r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] * 0.5 and "AP" in r for r in rows)
    assert "| artefact | backend |" in captured.err


def test_predict_json_interrupted_before_rename_keeps_previous_results(artefacts, tmp_path, monkeypatch):
    """A predict run that dies while writing --json leaves the previous results file whole (atomic write)."""
    import sfdeploy.io

    _, onnx_path = artefacts.get("retinanet")
    image = write_jpeg(tmp_path / "x.jpg", synthetic_image(2))
    out = tmp_path / "results.json"
    out.write_text('["previous run"]')

    def killed(tmp, path):  # noqa: ANN001, ANN202 - the process dies after writing, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(sfdeploy.io, "_commit", killed)
    args = parser().parse_args(["predict", str(onnx_path), str(image), "--json", str(out)])
    with pytest.raises(KeyboardInterrupt):
        args.handler(args)
    assert json.loads(out.read_text()) == ["previous run"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "x.jpg"]
