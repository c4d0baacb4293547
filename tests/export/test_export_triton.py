"""Triton model repository: config.pbtxt parsed with Triton's own schema (tritonclient's model_config protobuf)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse_config(path: Path):  # type: ignore[no-untyped-def]
    """Triton's ModelConfig message; text_format.ParseError on any field, type or enum Triton does not know."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _dims(cfg) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    return {t.name: list(t.dims) for t in list(cfg.input) + list(cfg.output)}


@pytest.mark.parametrize("detector", ["retinanet", "mask_rcnn"])
def test_triton_repository(detector, exported, tmp_path):  # type: ignore[no-untyped-def]
    import onnx

    from sfdeploy.export.triton import write_triton_repository

    res = exported[detector]
    model_dir = write_triton_repository(res.path, tmp_path / "repo")
    assert model_dir.name == f"{detector}_sampling_free"  # default name: detector_method, not the file's stem
    assert (model_dir / "1" / "model.onnx").is_file()
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt"]  # no temp files left
    cfg = parse_config(model_dir / "config.pbtxt")
    MC = model_config_pb2
    assert cfg.name == model_dir.name and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 0
    assert not cfg.HasField("dynamic_batching")  # batch is fixed at 1 in the graph
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(MC.ModelInstanceGroup.KIND_CPU, 1)]
    m = onnx.load(str(model_dir / "1" / "model.onnx"))
    assert [i.name for i in cfg.input] == [i.name for i in m.graph.input]
    assert [o.name for o in cfg.output] == [o.name for o in m.graph.output]
    types = {t.name: t.data_type for t in list(cfg.input) + list(cfg.output)}
    assert types["images"] == MC.TYPE_FP32 and types["boxes"] == MC.TYPE_FP32 and types["labels"] == MC.TYPE_INT64
    dims = _dims(cfg)
    assert dims["images"] == [1, 3, -1, -1] and dims["boxes"] == [-1, 4] and dims["scores"] == [-1]
    if detector == "mask_rcnn":
        assert dims["masks"] == [-1, 1, -1, -1]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["detector"] == detector and json.loads(params["class_names"])


def test_triton_instances_and_names(exported, tmp_path):  # type: ignore[no-untyped-def]
    from sfdeploy.export.triton import write_triton_repository
    from sfdeploy.errors import UserError

    path = exported["retinanet"].path
    MC = model_config_pb2.ModelInstanceGroup
    d = write_triton_repository(path, tmp_path, model_name="my model", instance_kind="gpu", instance_count=3)
    cfg = parse_config(d / "config.pbtxt")
    assert d.name == "my_model" == cfg.name and [(g.kind, g.count) for g in cfg.instance_group] == [(MC.KIND_GPU, 3)]
    engine = tmp_path / "fake.engine"
    engine.write_bytes(b"plan")
    d = write_triton_repository(path, tmp_path / "plan", engine_path=engine)
    cfg = parse_config(d / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.instance_group[0].kind == MC.KIND_GPU
    assert (d / "1" / "model.plan").read_bytes() == b"plan"
    with pytest.raises(UserError, match="GPU"):
        write_triton_repository(path, tmp_path / "bad", engine_path=engine, instance_kind="cpu")
    with pytest.raises(UserError, match="instance-count"):
        write_triton_repository(path, tmp_path / "bad", instance_count=0)


def test_triton_dynamic_batch_graph(tmp_path):  # type: ignore[no-untyped-def]
    """A graph whose metadata says batch "dynamic": max_batch_size > 0, dims without the batch, dynamic batching."""
    import onnx
    from onnx import TensorProto, helper

    from sfdeploy.export.triton import write_triton_repository

    g = helper.make_graph([helper.make_node("Identity", ["images"], ["scores"])], "g",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3, "h", "w"])])
    model = helper.make_model(g)
    for k, v in {"sfdeploy.input": json.dumps({"batch": "dynamic"}), "detector": "fcos", "method": "baseline"}.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(tmp_path / "b.onnx"))
    d = write_triton_repository(tmp_path / "b.onnx", tmp_path / "repo", max_batch_size=16)
    cfg = parse_config(d / "config.pbtxt")
    assert d.name == "fcos_baseline" and cfg.max_batch_size == 16 and cfg.HasField("dynamic_batching")
    assert _dims(cfg)["images"] == [3, -1, -1]


@pytest.mark.parametrize("bad", ['name: "x"\ninput [ { name: "a" data_type: TYPE_FLOAT32 dims: [1] } ]',
                                 'name: "x"\nbatch_size: 0',
                                 'name: "x"\ninstance_group [ { kind: KIND_TPU } ]'])
def test_triton_schema_rejects_mistakes(bad, tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "config.pbtxt").write_text(bad)
    with pytest.raises(text_format.ParseError):
        parse_config(tmp_path / "config.pbtxt")


def test_cli_triton_options(checkpoints, tmp_path, capsys):  # type: ignore[no-untyped-def]
    from test_export_deploy import run_cli

    ckpt = str(checkpoints["fcos"])
    repo = tmp_path / "repo"
    assert run_cli(["export", ckpt, "--format", "triton", "--out", str(repo), "--exporter", "torchscript",
                    "--no-verify", "--instance-kind", "cpu", "--instance-count", "2"]) == 0
    cfg = parse_config(repo / "fcos_sampling_free" / "config.pbtxt")
    assert cfg.instance_group[0].count == 2 and not (repo / "_staging").exists()
    capsys.readouterr()
    # instance options belong to the triton format
    assert run_cli(["export", ckpt, "--out", str(tmp_path / "a.onnx"), "--instance-count", "2"]) == 2
    err = capsys.readouterr().err
    assert "--instance-count" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "a.onnx").exists()


def test_cli_triton_int8(checkpoints, tmp_path):  # type: ignore[no-untyped-def]
    from test_export_deploy import run_cli

    repo = tmp_path / "repo"
    assert run_cli(["export", str(checkpoints["retinanet"]), "--format", "triton", "--out", str(repo),
                    "--exporter", "torchscript", "--int8", "--calib-data", "synthetic:8", "--calib-images", "2"]) == 0
    model_dir = repo / "retinanet_sampling_free"
    cfg = parse_config(model_dir / "config.pbtxt")
    assert cfg.parameters["sfdeploy.precision"].string_value == "int8"
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.onnx"] and not (repo / "_staging").exists()


def _identity_graph(path: Path, batch: int | str) -> Path:
    """A tiny graph whose sfdeploy metadata says batch 1 or "dynamic" (what Triton's config must match)."""
    import onnx
    from onnx import TensorProto, helper

    shape = ["batch" if batch == "dynamic" else 1, 3, "h", "w"]
    g = helper.make_graph([helper.make_node("Identity", ["images"], ["scores"])], "g",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, shape)])
    model = helper.make_model(g)
    model.metadata_props.add(key="sfdeploy.input", value=json.dumps({"batch": batch}))
    onnx.save(model, str(path))
    return path


def _check_what_triton_would_load(model_dir: Path) -> None:
    """The version(s) Triton's poll would load now, each with a graph that fits the config (batch dimension)."""
    from sfdeploy.export.onnx import read_metadata

    if not (model_dir / "config.pbtxt").is_file():
        return
    cfg = parse_config(model_dir / "config.pbtxt")
    folders = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    served = list(cfg.version_policy.specific.versions) if cfg.version_policy.HasField("specific") \
        else folders[-1:]  # Triton's default policy: the highest version
    for v in served:
        graph = model_dir / str(v) / "model.onnx"
        assert graph.is_file(), f"config serves version {v}, which has no model"
        batch = json.loads(read_metadata(graph)["sfdeploy.input"])["batch"]
        assert (batch == "dynamic") == (cfg.max_batch_size > 0), f"version {v} ({batch}) with {cfg.max_batch_size=}"


@pytest.mark.parametrize("old_config", ["pinned", "unpinned"])
def test_triton_rewrite_keeps_graph_and_config_paired(
        tmp_path, monkeypatch, old_config):  # type: ignore[no-untyped-def]
    """A polling Triton sees the repository after every file operation of a re-export from batch 1 to dynamic and
    back: every state it could load pairs each graph with its own config (max_batch_size 0 for batch 1)."""
    import os
    import shutil

    from sfdeploy.export.triton import write_triton_repository

    one, dyn = _identity_graph(tmp_path / "one.onnx", 1), _identity_graph(tmp_path / "dyn.onnx", "dynamic")
    repo = tmp_path / "repo"
    model_dir = write_triton_repository(one, repo, model_name="m")
    if old_config == "unpinned":  # a repository written before configs pinned their version
        text = parse_config(model_dir / "config.pbtxt")
        text.ClearField("version_policy")
        (model_dir / "config.pbtxt").write_text(text_format.MessageToString(text))
    states = 0

    def polled(fn):  # type: ignore[no-untyped-def]
        def call(*a, **k):  # type: ignore[no-untyped-def]
            nonlocal states
            result = fn(*a, **k)
            _check_what_triton_would_load(model_dir)
            states += 1
            return result
        return call

    for name in ("replace", "rename", "mkdir"):
        monkeypatch.setattr(os, name, polled(getattr(os, name)))
    monkeypatch.setattr(shutil, "rmtree", polled(shutil.rmtree))
    for graph, max_batch in ((dyn, 4), (one, 0)):
        write_triton_repository(graph, repo, model_name="m")
        cfg = parse_config(model_dir / "config.pbtxt")
        assert cfg.max_batch_size == (8 if max_batch else 0)
        served = list(cfg.version_policy.specific.versions)
        assert sorted(p.name for p in model_dir.iterdir()) == [str(served[0]), "config.pbtxt"]  # old versions gone
        assert (model_dir / str(served[0]) / "model.onnx").read_bytes() == graph.read_bytes()
    assert states >= 6
