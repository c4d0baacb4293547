"""TensorRT 10+ engines from the exported ONNX graph, and a static op check for machines without TensorRT.

Only the TensorRT 10 Python API is used (no implicit batch, no deprecated binding calls):
`trt.Builder` -> `create_network(0)` (explicit batch is the only mode in 10.x) -> `trt.OnnxParser` ->
`builder_config.set_memory_pool_limit(WORKSPACE, ...)`, FP16 flag, one optimisation profile for `images`,
a timing cache file, `build_serialized_network`. Writes `X.engine` and `X.engine.json` (the ONNX metadata dict).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPS_FILE = Path(__file__).with_name("trt_supported_ops.json")


@dataclass
class OpCheck:
    ops: dict[str, int]
    unsupported: list[str]
    unknown: list[str]
    foreign_domain: list[str]
    source: str
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.unsupported or self.unknown or self.foreign_domain)

    def summary(self) -> str:
        if self.ok:
            return f"all {len(self.ops)} op types are supported by TensorRT's ONNX parser ({self.source})"
        parts = []
        if self.unsupported:
            parts.append(f"unsupported: {', '.join(self.unsupported)}")
        if self.unknown:
            parts.append(f"not in the list: {', '.join(self.unknown)}")
        if self.foreign_domain:
            parts.append(f"custom-domain ops (need plugins): {', '.join(self.foreign_domain)}")
        return "TensorRT op check failed: " + "; ".join(parts)


def supported_ops() -> dict[str, Any]:
    return json.loads(OPS_FILE.read_text())


def _graph_ops(graph: Any, counts: dict[str, int], foreign: set[str]) -> None:
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            foreign.add(f"{node.domain}::{node.op_type}")
        else:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        for attr in node.attribute:  # If / Loop / Scan bodies
            if attr.g is not None and len(attr.g.node):
                _graph_ops(attr.g, counts, foreign)
            for g in attr.graphs:
                _graph_ops(g, counts, foreign)


def check_trt_ops(onnx_path: str | Path) -> OpCheck:
    """Every op of the graph (subgraphs included) against export/trt_supported_ops.json."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    table = supported_ops()
    counts: dict[str, int] = {}
    foreign: set[str] = set()
    _graph_ops(model.graph, counts, foreign)
    # local functions (dynamo exporter) are inlined by the parser: check their bodies, not their names
    local = {f.name for f in model.functions}
    for f in model.functions:
        for node in f.node:
            if node.domain in ("", "ai.onnx"):
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
    foreign = {f for f in foreign if f.split("::", 1)[1] not in local}
    sup, unsup = set(table["supported"]), set(table["unsupported"])
    return OpCheck(ops=dict(sorted(counts.items())), unsupported=sorted(o for o in counts if o in unsup),
                   unknown=sorted(o for o in counts if o not in sup and o not in unsup),
                   foreign_domain=sorted(foreign), source=table["source"],
                   notes={o: table["restrictions"][o] for o in counts if o in table.get("restrictions", {})})


def _require_tensorrt():  # type: ignore[no-untyped-def]
    from sfdeploy.errors import UserError

    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        raise UserError("TensorRT is not installed (pip install 'sfdeploy[tensorrt]' on a machine with an NVIDIA GPU); "
                        "export --format onnx works everywhere") from None
    if int(str(trt.__version__).split(".")[0]) < 10:
        raise UserError(f"TensorRT {trt.__version__} found; sfdeploy needs TensorRT 10 or newer")
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_gpu = False
    if not has_gpu:
        raise UserError("no CUDA GPU available: TensorRT engines can only be built on a machine with an NVIDIA GPU")
    return trt


def build_engine(onnx_path: str | Path, out_path: str | Path, *, fp16: bool = False, min_size: int = 128,
                 opt_size: int = 640, max_size: int = 1333, workspace_gb: float = 4.0,
                 timing_cache: str | Path | None = None) -> Path:
    """Build `out_path` (.engine) + `out_path.json` from an exported ONNX graph. Fails at once without TensorRT/GPU."""
    from sfdeploy.errors import UserError
    from sfdeploy.io import atomic_write_bytes, atomic_write_text, remove_stale_temp_files

    trt = _require_tensorrt()
    onnx_path, out = Path(onnx_path), Path(out_path)
    if not (min_size <= opt_size <= max_size):
        raise UserError(f"need --min-size <= --opt-size <= --max-size, got {min_size}, {opt_size}, {max_size}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        if not builder.platform_has_fast_fp16:
            raise UserError("this GPU has no fast FP16; build without --fp16")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 3, min_size, min_size), (1, 3, opt_size, opt_size), (1, 3, max_size, max_size))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else out.with_suffix(".timing.cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar = Path(str(out) + ".json")
    for target in (out, sidecar, cache_path):  # left by a killed earlier build
        remove_stale_temp_files(target.parent, name=target.name)
    atomic_write_bytes(out, bytes(serialized))
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    from .onnx import read_metadata

    meta = dict(read_metadata(onnx_path))
    meta.update({"sfdeploy.tensorrt": json.dumps({
        "version": trt.__version__, "fp16": fp16, "profile": {"min": min_size, "opt": opt_size, "max": max_size},
        "workspace_gb": workspace_gb, "build_seconds": round(time.perf_counter() - t0, 2), "onnx": onnx_path.name})})
    atomic_write_text(sidecar, json.dumps(meta, indent=2))
    return out
