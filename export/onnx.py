"""Checkpoint -> end-to-end ONNX graph (resize/normalise, detector, NMS inside), metadata, checker, parity."""

from __future__ import annotations

import io
import logging
import os
import time
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfdeploy import artefact
from sfdeploy.io import atomic_path, remove_stale_temp_files

from .verify import DEFAULT_SIZES, ParityError, ParityReport, verify_onnx

EXPORTERS = ("auto", "torchscript", "dynamo")
DEFAULT_OPSET = 17
MIN_DYNAMO_OPSET = 18  # torch's dynamo exporter emits opset >= 18
DUMMY_HW = (192, 160)  # non-square, so no height/width specialisation sneaks into the trace


@dataclass
class ExportResult:
    path: Path
    exporter: str
    opset: int
    seconds: float
    bytes: int
    parity: ParityReport | None = None
    simplified: bool = False
    attempts: list[str] = field(default_factory=list)  # "dynamo: <why it was not used>", ...
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "exporter": self.exporter, "opset": self.opset,
                "seconds": round(self.seconds, 3), "bytes": self.bytes, "simplified": self.simplified,
                "attempts": self.attempts, "parity": self.parity.to_dict() if self.parity else None}


def output_names(config: Any) -> list[str]:
    return artefact.output_names(config.has_masks)


def build_metadata(config: Any, meta: dict[str, Any], exporter: str, opset: int, nms: str,
                   batch: int | str = 1) -> dict[str, str]:
    """metadata_props per docs/CONTRACTS.md (all values strings), built by sfdeploy.artefact."""
    canvas = batch_canvas(config) if batch == "dynamic" else None
    return artefact.build_metadata(config, meta, exporter=exporter, opset=opset, nms=nms, batch=batch, canvas=canvas)


def batch_canvas(config: Any) -> tuple[int, int]:
    """The letterbox canvas of a batched graph of `config` (sfdeploy.processing decides it)."""
    from sfdeploy.processing import letterbox_canvas

    return letterbox_canvas(config.min_size, config.max_size)


def read_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def _resolve_source(source: Any, config: Any, meta: dict[str, Any] | None) -> tuple[Any, Any, dict[str, Any]]:
    from torch import nn

    if isinstance(source, nn.Module):
        if config is None:
            raise ValueError("export_onnx(model, ...) needs config=ModelConfig")
        return source.eval(), config, dict(meta or {})
    from sfdeploy.checkpoint import load_model

    model, ckpt = load_model(source)
    return model, ckpt.config, dict(ckpt.meta if meta is None else meta)


def model_device(model: Any) -> Any:
    """The device of the model's parameters (CPU for a parameterless model)."""
    import torch

    return next((p.device for p in model.parameters()), torch.device("cpu"))


def example_input(model: Any, hw: tuple[int, int] = DUMMY_HW) -> Any:
    """The export's dummy image, reproducible (CPU generator), on the model's device: a CUDA-trained model
    exports where it is."""
    import torch

    x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(0))
    return x.to(model_device(model))


def _export_graph(model: Any, config: Any, out: Path, exporter: str, opset: int, nms: str) -> int:
    """Write the raw graph; returns the opset actually used."""
    import torch

    from .adapters import DetectorExportAdapter, dynamo_translation_table, export_patches, register_torchscript_symbolic

    adapter = DetectorExportAdapter(model, config.has_masks).eval()
    dummy = example_input(model)
    names = output_names(config)
    quiet = io.StringIO()
    with torch.no_grad(), export_patches(model, nms=nms, dynamo=exporter == "dynamo", example=dummy), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            if nms == "multiclass":
                register_torchscript_symbolic(opset)
            dyn = {"images": {2: "height", 3: "width"}, **{n: {0: "num_detections"} for n in names}}
            if config.has_masks:
                dyn["masks"] = {0: "num_detections", 2: "height", 3: "width"}
            torch.onnx.export(adapter, (dummy,), str(out), dynamo=False, opset_version=opset, input_names=["images"],
                              output_names=names, dynamic_axes=dyn, do_constant_folding=True)
            return opset
        from torch.export import Dim

        opset = max(opset, MIN_DYNAMO_OPSET)
        shapes = {"images": {2: Dim("height", min=32, max=4096), 3: Dim("width", min=32, max=4096)}}
        # torch.export (non-strict) first, so that its error, not the ONNX wrapper's fallback chain, is reported
        program = torch.export.export(adapter, (dummy,), dynamic_shapes=shapes, strict=False)
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with redirect_stdout(quiet):
            prog = torch.onnx.export(program, (dummy,), dynamo=True, opset_version=opset, input_names=["images"],
                                     output_names=names, verbose=False,
                                     custom_translation_table=dynamo_translation_table() if nms == "multiclass" else None,
                                     optimize=True)
            prog.save(str(out))
        return opset


def _finalise(out: Path, metadata: dict[str, str]) -> None:
    import onnx

    m = onnx.load(str(out))
    del m.metadata_props[:]
    for k, v in metadata.items():
        m.metadata_props.add(key=k, value=v)
    m.producer_name = "sfdeploy"
    onnx.save(m, str(out))
    onnx.checker.check_model(str(out), full_check=True)


def simplify_onnx(path: Path) -> None:
    import onnx
    import onnxslim

    m = onnx.load(str(path))
    props = [(p.key, p.value) for p in m.metadata_props]
    slim = onnxslim.slim(m)
    del slim.metadata_props[:]
    for k, v in props:
        slim.metadata_props.add(key=k, value=v)
    onnx.save(slim, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def _export_checked(model: Any, cfg: Any, meta: dict[str, Any], path: Path, exporter: str, opset: int, nms: str,
                    *, simplify: bool, verify: bool, sizes: tuple[int, ...], data: str | None,
                    tolerances: dict[str, float] | None, failed_copy: Path, batch: int | str = 1
                    ) -> tuple[int, dict[str, str], float, ParityReport | None, bool]:
    """Export, finalise, verify (and simplify) into `path` -> (opset, metadata, export seconds, parity, simplified).
    A graph failing parity is moved to `failed_copy` for inspection, never over the target."""
    t0 = time.perf_counter()
    if batch == "dynamic":
        from .batched import export_batched_graph
        from .batched_verify import verify_batched

        used_opset = export_batched_graph(model, batch_canvas(cfg), str(path), opset)

        def check() -> ParityReport:
            return verify_batched(path, model, cfg, batch_canvas(cfg), sizes=sizes, data=data, tolerances=tolerances)
    else:
        used_opset = _export_graph(model, cfg, path, exporter, opset, nms)

        def check() -> ParityReport:
            return verify_onnx(path, model, cfg, sizes=sizes, data=data, tolerances=tolerances)
    metadata = build_metadata(cfg, meta, exporter, used_opset, nms, batch)
    _finalise(path, metadata)
    seconds = time.perf_counter() - t0
    report = check() if verify else None
    simplified = False
    if simplify and (report is None or report.passed):
        simplify_onnx(path)
        simplified = True
        if verify:
            report = check()
    if report is not None and not report.passed:
        os.replace(path, failed_copy)
        report.artefact = str(failed_copy)
        raise ParityError(report)
    return used_opset, metadata, seconds, report, simplified


def export_onnx(checkpoint_or_model: Any, out_path: str | Path, *, config: Any = None,
                meta: dict[str, Any] | None = None, opset: int = DEFAULT_OPSET, exporter: str = "auto",
                nms: str = "multiclass", simplify: bool = False, verify: bool = True,
                sizes: tuple[int, ...] = DEFAULT_SIZES, data: str | None = None,
                tolerances: dict[str, float] | None = None, batch: int | str = 1) -> ExportResult:
    """Export a checkpoint path (or an eval-mode model + `config`) to `out_path`.

    batch: 1 (default: [1,3,H,W] in, N detections out) or "dynamic" (one-stage detectors, TorchScript exporter:
    [B,3,S,S] letterboxed images in, padded per-image outputs, export/batched.py).

    exporter: "torchscript" (torch.onnx legacy), "dynamo" (torch.export based, with export-only adapters), or
    "auto": TorchScript first, dynamo when TorchScript fails (e.g. once torch removes it) or misses parity. Both pass
    parity for all four detectors; TorchScript exports in seconds where dynamo takes about a minute on a 2-core CPU
    (docs/EXPORT.md). With verify=True a
    failed parity raises ParityError (the graph is left next to `out_path` as `<name>.parity-failed` for
    inspection); with "auto" the last error wins. `out_path` is replaced atomically, only by a graph that passed:
    a failed or killed export leaves the previous file intact.
    """
    from sfdeploy.errors import UserError

    if exporter not in EXPORTERS:
        raise UserError(f"unknown exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    if not 7 <= opset <= 23:
        raise UserError(f"opset {opset} unsupported: use 11..23 (default {DEFAULT_OPSET})")
    if batch not in (1, "dynamic"):
        raise UserError(f"--batch must be 1 or dynamic, got {batch!r}")
    if batch == "dynamic" and exporter == "dynamo":
        raise UserError("--batch dynamic uses the TorchScript exporter; leave --exporter at auto or torchscript")
    model, cfg, meta_d = _resolve_source(checkpoint_or_model, config, meta)
    if batch == "dynamic":
        from .batched import check_batchable

        check_batchable(cfg)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    order = ["torchscript", "dynamo"] if exporter == "auto" and batch == 1 else \
        (["torchscript"] if exporter == "auto" else [exporter])
    attempts: list[str] = []
    last_exc: BaseException | None = None
    remove_stale_temp_files(out.parent, name=out.name)  # left by a killed earlier export of the same file
    for name in order:
        try:
            with atomic_path(out) as tmp:  # `out` is replaced only by a graph that passed every check
                used_opset, metadata, seconds, report, simplified = _export_checked(
                    model, cfg, meta_d, tmp, name, opset, nms, simplify=simplify, verify=verify, sizes=sizes,
                    data=data, tolerances=tolerances, failed_copy=out.with_name(f"{out.name}.parity-failed"),
                    batch=batch)
            if report is not None:
                report.artefact = str(out)
            return ExportResult(path=out, exporter=name, opset=used_opset, seconds=seconds,
                                bytes=out.stat().st_size, parity=report, simplified=simplified, attempts=attempts,
                                metadata=metadata)
        except ParityError as exc:
            last_exc = exc
            attempts.append(f"{name}: parity failed")
        except Exception as exc:  # exporter failure: record one line, try the next exporter
            last_exc = exc
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            attempts.append(f"{name}: {type(exc).__name__}: {first[:300]}")
    assert last_exc is not None
    if isinstance(last_exc, ParityError):
        raise last_exc
    raise UserError(f"ONNX export failed ({'; '.join(attempts)})") from last_exc
