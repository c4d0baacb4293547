"""TensorRT 10 and 11 engines from the exported ONNX graph, and a static op check for machines without TensorRT.

Only API common to TensorRT 10 and 11 is used (no implicit batch, no deprecated binding calls):
`trt.Builder` -> `create_network(flags)` -> `trt.OnnxParser` -> `set_memory_pool_limit(WORKSPACE, ...)`, one
optimisation profile for `images`, a timing cache file, `build_serialized_network`. FP16: TensorRT 10 sets
`BuilderFlag.FP16`; TensorRT 11 removed weak typing, so the graph is first converted to mixed precision with
NVIDIA ModelOpt AutoCast (`nvidia-modelopt`, imported lazily) and built as a strongly typed network. Writes
`X.engine` and `X.engine.json` (the ONNX metadata dict plus the profile the predictor fits inputs into).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfdeploy.serving.backends.trt_runtime import DEFAULT_PROFILE

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
    major = int(str(trt.__version__).split(".")[0])
    if not 10 <= major <= 11:
        raise UserError(f"TensorRT {trt.__version__} found; sfdeploy supports TensorRT 10 and 11")
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_gpu = False
    if not has_gpu:
        raise UserError("no CUDA GPU available: TensorRT engines can only be built on a machine with an NVIDIA GPU")
    return trt


def fp16_mode(trt: Any) -> str:
    """"flag" (TensorRT 10: BuilderFlag.FP16) or "strongly_typed" (TensorRT 11 removed the flag)."""
    return "flag" if hasattr(trt.BuilderFlag, "FP16") else "strongly_typed"


def _mixed_precision_onnx(onnx_path: Path, out: Path) -> Path:
    """TensorRT 11 FP16: an FP16 mixed-precision copy of the graph (fp32 inputs/outputs) via ModelOpt AutoCast."""
    from sfdeploy.errors import UserError

    try:
        import modelopt.onnx.autocast as autocast  # type: ignore[import-not-found]
    except ImportError:
        raise UserError("TensorRT 11 builds FP16 engines only from a mixed-precision graph: pip install "
                        "nvidia-modelopt (or use TensorRT 10, or build without --fp16)") from None
    import onnx

    converted = autocast.convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type="fp16",
                                                    keep_io_types=True)
    from sfdeploy.io import atomic_write_bytes

    path = out.with_suffix(".fp16.onnx")
    atomic_write_bytes(path, converted.SerializeToString())
    onnx.checker.check_model(str(path))
    return path


def build_engine(onnx_path: str | Path, out_path: str | Path, *, fp16: bool = False,
                 min_size: int = DEFAULT_PROFILE["min"], opt_size: int = DEFAULT_PROFILE["opt"],
                 max_size: int = DEFAULT_PROFILE["max"], workspace_gb: float = 4.0,
                 timing_cache: str | Path | None = None) -> Path:
    """Build `out_path` (.engine) + `out_path.json` from an exported ONNX graph. Fails at once without TensorRT/GPU.

    The default profile (32..2048 px per side) covers every image the predictor sends with its default max side."""
    from sfdeploy.errors import UserError
    from sfdeploy.io import atomic_write_bytes, remove_stale_temp_files

    trt = _require_tensorrt()
    onnx_path, out = Path(onnx_path), Path(out_path)
    if not (1 <= min_size <= opt_size <= max_size):
        raise UserError(f"need 1 <= --min-size <= --opt-size <= --max-size, got {min_size}, {opt_size}, {max_size}")
    mode = fp16_mode(trt) if fp16 else "fp32"
    parse_path = _mixed_precision_onnx(onnx_path, out) if mode == "strongly_typed" else onnx_path
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if mode == "strongly_typed" else 0
    network = builder.create_network(flags)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(parse_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT could not parse {parse_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if mode == "flag":
        if not getattr(builder, "platform_has_fast_fp16", True):
            raise UserError("this GPU has no fast FP16; build without --fp16")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 3, min_size, min_size), (1, 3, opt_size, opt_size), (1, 3, max_size, max_size))
    if config.add_optimization_profile(profile) < 0:
        raise UserError(f"TensorRT rejected the optimisation profile {min_size}/{opt_size}/{max_size} for 'images'")
    cache_path = Path(timing_cache) if timing_cache else out.with_suffix(".timing.cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if cache is None or config.set_timing_cache(cache, ignore_mismatch=False) is False:
        raise UserError(f"TensorRT could not use the timing cache {cache_path} (delete it and build again)")
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
    write_sidecar(sidecar, onnx_path, {
        "version": trt.__version__, "fp16": fp16, "precision": mode,
        "profile": {"min": min_size, "opt": opt_size, "max": max_size},
        "workspace_gb": workspace_gb, "build_seconds": round(time.perf_counter() - t0, 2), "onnx": onnx_path.name})
    return out


def write_sidecar(sidecar: str | Path, onnx_path: str | Path, tensorrt: dict[str, Any]) -> Path:
    """Write `X.engine.json` (atomic): the ONNX graph's metadata plus `sfdeploy.tensorrt` (sfdeploy.artefact)."""
    from sfdeploy.artefact import tensorrt_sidecar
    from sfdeploy.io import atomic_write_text

    from .onnx import read_metadata

    atomic_write_text(sidecar, json.dumps(tensorrt_sidecar(read_metadata(onnx_path), tensorrt), indent=2))
    return Path(sidecar)
