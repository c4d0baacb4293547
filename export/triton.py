"""Triton Inference Server model repository from an exported ONNX graph (or a TensorRT engine built from it).

Layout: <out>/<model_name>/config.pbtxt and <out>/<model_name>/<version>/model.onnx (onnxruntime backend) or
<version>/model.plan (tensorrt backend), version 1 for a new model. Default model name: `<detector>_<method>` from
the graph's metadata. Instances:
`instance_kind` "auto" (CPU for ONNX, GPU for a TensorRT plan), "cpu" or "gpu", `instance_count` of them.
sfdeploy's detection graphs have an explicit batch dimension of 1, so max_batch_size is 0 and dims are written in
full ([1, 3, -1, -1]). A graph whose metadata says `"batch": "dynamic"` gets max_batch_size > 0, dims without the
batch dimension (Triton's convention) and `dynamic_batching`. config.pbtxt is Triton's `ModelConfig` protobuf in
text format; the tests parse it with Triton's own schema (tritonclient's model_config_pb2).

Rewriting a repository that a polling Triton serves: config.pbtxt pins the served version (`version_policy`
specific), each export writes its model into the next version folder, then the config that pins it, then removes
the older folders. A poll at any moment sees a config with the graph it was written for (never a batched graph with
the old `max_batch_size: 0`); a config without a pin (written before pins) is first pinned to the version it serves.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

# ONNX TensorProto element type -> Triton DataType
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 100  # dynamic_batching: how long Triton waits to fill a batch
ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 6: "TYPE_INT32", 7: "TYPE_INT64",
                  9: "TYPE_BOOL", 2: "TYPE_UINT8", 3: "TYPE_INT8"}


def graph_io(onnx_path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """[(name, data_type, dims)] for inputs and outputs; symbolic or unknown dims become -1."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)

    def io(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out.append({"name": v.name, "data_type": ONNX_TO_TRITON[t.elem_type], "dims": dims})
        return out

    return io(m.graph.input), io(m.graph.output)


def _fix_output_dims(outputs: list[dict[str, Any]], has_masks: bool, batched_k: int | None = None) -> None:
    """Graph shape inference may leave data-dependent outputs' ranks or dims unknown; fill in the contract's
    (a batched graph: [B], [B,K,4], [B,K], [B,K] with K = detections_per_img)."""
    contract = {"boxes": [-1, 4], "scores": [-1], "labels": [-1], "masks": [-1, 1, -1, -1]}
    if batched_k is not None:
        contract = {"num_detections": [-1], "boxes": [-1, batched_k, 4], "scores": [-1, batched_k],
                    "labels": [-1, batched_k]}
    for o in outputs:
        want = contract.get(o["name"])
        if want is None:
            continue
        if len(o["dims"]) != len(want):
            o["dims"] = list(want)
        else:
            o["dims"] = [w if d == -1 else d for d, w in zip(o["dims"], want)]


def render_config(name: str, platform: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], *,
                  max_batch_size: int = 0, instance_count: int = 1, kind: str = "KIND_CPU",
                  dynamic_batching: bool = False, parameters: dict[str, str] | None = None,
                  max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, version: int | None = None) -> str:
    def tensor(t: dict[str, Any]) -> str:
        # a per-image scalar ([B] in the graph): Triton needs >= 1 dim, so [1] reshaped to the model's []
        dims, reshape = (t["dims"], "") if t["dims"] else ([1], "\n    reshape: { shape: [ ] }")
        return (f'  {{\n    name: "{t["name"]}"\n    data_type: {t["data_type"]}\n'
                f'    dims: [ {", ".join(str(d) for d in dims)} ]{reshape}\n  }}')

    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}",
             "input [\n" + ",\n".join(tensor(t) for t in inputs) + "\n]",
             "output [\n" + ",\n".join(tensor(t) for t in outputs) + "\n]",
             f"instance_group [\n  {{\n    count: {instance_count}\n    kind: {kind}\n  }}\n]"]
    if dynamic_batching:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(max_queue_delay_us)}\n}}")
    if version is not None:
        lines.append(_pin(version))
    for k, v in (parameters or {}).items():
        lines.append(f'parameters {{\n  key: "{k}"\n  value: {{\n    string_value: {json.dumps(v)}\n  }}\n}}')
    return "\n".join(lines) + "\n"


def _pin(version: int) -> str:
    return f"version_policy {{\n  specific {{\n    versions: [ {int(version)} ]\n  }}\n}}"


def version_folders(model_dir: Path) -> list[int]:
    """The model's version folders (integer names), ascending."""
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) \
        if model_dir.is_dir() else []


def _pin_served_version(config: Path, versions: list[int]) -> None:
    """Before a new version folder appears: make an unpinned config (Triton's default policy serves the highest
    version) pin the version it serves now, so the new folder is not loaded with this old config."""
    from sfdeploy.io import atomic_write_text

    if not versions or not config.is_file():
        return
    text = config.read_text()
    if "version_policy" in text:  # ours (pinned) or hand-written: left as it is
        return
    atomic_write_text(config, text.rstrip("\n") + "\n" + _pin(versions[-1]) + "\n")


def default_model_name(meta: dict[str, str], fallback: str) -> str:
    """`<detector>_<method>` (e.g. retinanet_sampling_free) when the graph says so, else `fallback`; Triton-safe."""
    name = f"{meta['detector']}_{meta['method']}" if meta.get("detector") and meta.get("method") else fallback
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def resolve_kind(instance_kind: str, engine: bool) -> str:
    """"auto" -> KIND_GPU for a TensorRT plan, KIND_CPU for ONNX; "cpu"/"gpu" as asked (a plan needs a GPU)."""
    from sfdeploy.errors import UserError

    if instance_kind == "auto":
        return "KIND_GPU" if engine else "KIND_CPU"
    if instance_kind not in INSTANCE_KINDS:
        raise UserError(f"unknown instance kind {instance_kind!r}: choose auto, cpu or gpu")
    if engine and instance_kind == "cpu":
        raise UserError("a TensorRT plan runs on GPU instances only: use --instance-kind gpu (or auto)")
    return INSTANCE_KINDS[instance_kind]


def write_triton_repository(onnx_path: str | Path, out_dir: str | Path, *, model_name: str | None = None,
                            engine_path: str | Path | None = None, instance_count: int = 1,
                            instance_kind: str = "auto", max_batch_size: int = DEFAULT_MAX_BATCH,
                            max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, version: int = 1) -> Path:
    """Write the model repository; returns the model folder. `engine_path` -> tensorrt_plan variant (GPU).

    `version` is the version folder of a new model; a rewrite takes the next free number (see the module doc).

    `instance_kind` auto|cpu|gpu: auto is KIND_GPU for an engine, KIND_CPU for ONNX (gpu runs the ONNX graph with
    ONNX Runtime's CUDA provider inside Triton). `max_batch_size` applies only to graphs with a dynamic batch
    dimension, with `max_queue_delay_us` of Triton's dynamic batcher."""
    from sfdeploy.artefact import parse_metadata, triton_parameters
    from sfdeploy.errors import UserError
    from sfdeploy.io import atomic_path, atomic_write_text, remove_stale_temp_files

    from .onnx import read_metadata

    if instance_count < 1:
        raise UserError(f"--instance-count must be >= 1, got {instance_count}")
    if max_batch_size < 1:
        raise UserError(f"--max-batch-size must be >= 1, got {max_batch_size}")
    if max_queue_delay_us < 0:
        raise UserError(f"--max-queue-delay-us must be >= 0, got {max_queue_delay_us}")
    onnx_path = Path(onnx_path)
    meta = read_metadata(onnx_path)
    kind = resolve_kind(instance_kind, engine_path is not None)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name) if model_name else default_model_name(meta, onnx_path.stem)
    model_dir = Path(out_dir) / name
    inputs, outputs = graph_io(onnx_path)
    md = parse_metadata(meta)
    dynamic = md["input"].get("batch", 1) == "dynamic"
    k = next((o["shape"][1] for o in md["outputs"] if o.get("name") == "scores"), -1) if dynamic else None
    _fix_output_dims(outputs, "masks" in [o["name"] for o in outputs], k)
    if dynamic:  # Triton: with max_batch_size > 0 the dims leave out the batch dimension
        for t in inputs + outputs:
            t["dims"] = t["dims"][1:]
    keep = triton_parameters(meta)  # the artefact's whole contract metadata
    old = version_folders(model_dir)
    new = old[-1] + 1 if old else version
    platform = "tensorrt_plan" if engine_path is not None else "onnxruntime_onnx"
    source = Path(engine_path) if engine_path is not None else onnx_path
    target = model_dir / str(new) / ("model.plan" if engine_path is not None else "model.onnx")
    text = render_config(name, platform, inputs, outputs, max_batch_size=max_batch_size if dynamic else 0,
                         instance_count=instance_count, kind=kind, dynamic_batching=dynamic, parameters=keep,
                         max_queue_delay_us=max_queue_delay_us, version=new)
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(model_dir, name="config.pbtxt")
    _pin_served_version(model_dir / "config.pbtxt", old)
    try:
        with atomic_path(target) as tmp:  # Triton may be polling the repository: it never sees half a model
            shutil.copyfile(source, tmp)
    except BaseException:
        shutil.rmtree(target.parent, ignore_errors=True)  # the pinned config keeps serving the old version
        raise
    atomic_write_text(model_dir / "config.pbtxt", text)  # now the new version is served, with its own config
    for v in old:
        shutil.rmtree(model_dir / str(v), ignore_errors=True)
    return model_dir


