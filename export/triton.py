"""Triton Inference Server model repository from an exported ONNX graph (or a TensorRT engine built from it).

Layout: <out>/<model_name>/config.pbtxt and <out>/<model_name>/1/model.onnx (onnxruntime backend) or
1/model.plan (tensorrt backend). Default model name: `<detector>_<method>` from the graph's metadata. Instances:
`instance_kind` "auto" (CPU for ONNX, GPU for a TensorRT plan), "cpu" or "gpu", `instance_count` of them.
sfdeploy's detection graphs have an explicit batch dimension of 1, so max_batch_size is 0 and dims are written in
full ([1, 3, -1, -1]). A graph whose metadata says `"batch": "dynamic"` gets max_batch_size > 0, dims without the
batch dimension (Triton's convention) and `dynamic_batching`. config.pbtxt is Triton's `ModelConfig` protobuf in
text format; the tests parse it with Triton's own schema (tritonclient's model_config_pb2).
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
                  max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> str:
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
    for k, v in (parameters or {}).items():
        lines.append(f'parameters {{\n  key: "{k}"\n  value: {{\n    string_value: {json.dumps(v)}\n  }}\n}}')
    return "\n".join(lines) + "\n"


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
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    inputs, outputs = graph_io(onnx_path)
    md = parse_metadata(meta)
    dynamic = md["input"].get("batch", 1) == "dynamic"
    k = next((o["shape"][1] for o in md["outputs"] if o.get("name") == "scores"), -1) if dynamic else None
    _fix_output_dims(outputs, "masks" in [o["name"] for o in outputs], k)
    if dynamic:  # Triton: with max_batch_size > 0 the dims leave out the batch dimension
        for t in inputs + outputs:
            t["dims"] = t["dims"][1:]
    keep = triton_parameters(meta)  # the artefact's whole contract metadata
    if engine_path is not None:
        source, target = Path(engine_path), model_dir / str(version) / "model.plan"
        platform = "tensorrt_plan"
    else:
        source, target = onnx_path, model_dir / str(version) / "model.onnx"
        platform = "onnxruntime_onnx"
    remove_stale_temp_files(target.parent, name=target.name)
    remove_stale_temp_files(model_dir, name="config.pbtxt")
    with atomic_path(target) as tmp:  # Triton may be polling the repository: it never sees half a model
        shutil.copyfile(source, tmp)
    text = render_config(name, platform, inputs, outputs, max_batch_size=max_batch_size if dynamic else 0,
                         instance_count=instance_count, kind=kind, dynamic_batching=dynamic, parameters=keep,
                         max_queue_delay_us=max_queue_delay_us)
    atomic_write_text(model_dir / "config.pbtxt", text)
    return model_dir


