"""`--format openvino`: our checked ONNX graph converted to an OpenVINO IR (`X.xml` + `X.bin`) for Intel CPUs.

Why convert the ONNX graph (not the PyTorch model): it is the graph that already passed the parity check against
PyTorch, NMS and post-processing included, and `openvino.convert_model` reads it directly; the IR then only has to
match ONNX Runtime on that graph. Weights stay f32 in the IR (`compress_to_fp16=False`): the inference precision is
chosen when the CPU plugin compiles it (f32, or bf16 where the CPU has it) and recorded as the default in the
artefact metadata (`sfdeploy.openvino`). An int8 IR is the ORT-quantized QDQ graph converted as is: OpenVINO runs
the QuantizeLinear/DequantizeLinear pairs as int8 kernels (docs/EXPORT.md has the comparison).
`export_openvino` converts and checks the IR inside a staging folder next to `--out`; only an IR that passed moves
into place, the .bin then the .xml, back to back (`replace_ir`). A pair of files cannot be replaced atomically: a
process that reads the pair during those two renames may see the old .xml with the new .bin, so a live server is
pointed at a new file name (or restarted) rather than reading a pair being overwritten (docs/EXPORT.md).
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sfdeploy.artefact import openvino_metadata
from sfdeploy.errors import UserError
from sfdeploy.serving.backends.openvino_runtime import (check_precision, cpu_capabilities, import_openvino,
                                                        write_rt_info)

# OpenVINO f32 vs ONNX Runtime fp32 on the same graph: the fp32 parity tolerances of verify.py (scores 1e-3,
# boxes 1e-4 x side) and every top-10 detection found again; bf16 and int8 are held to the int8 agreement check.
F32_TOLERANCES = {"agreement": 1.0, "score": 1e-3, "box_rel": 1e-4}


@dataclass
class OpenVinoResult:
    xml: Path
    bin: Path
    precision: str
    source_precision: str
    bytes: int
    openvino_version: str

    def to_dict(self) -> dict[str, Any]:
        return {"xml": str(self.xml), "bin": str(self.bin), "precision": self.precision,
                "source_precision": self.source_precision, "bytes": self.bytes,
                "openvino_version": self.openvino_version}


def ir_paths(out: str | Path) -> tuple[Path, Path]:
    """(X.xml, X.bin) for `--out X.xml`; any other suffix is a one-line UserError."""
    out = Path(out)
    if out.suffix.lower() != ".xml":
        raise UserError(f"--format openvino writes an IR: --out must end in .xml (got {out.name!r}); "
                        "the weights go next to it as .bin")
    return out, out.with_suffix(".bin")


def convert_onnx(onnx_path: str | Path, out: str | Path, *, precision: str = "f32") -> OpenVinoResult:
    """Convert an sfdeploy ONNX graph (fp32 or ORT-QDQ int8) to `out` (X.xml + X.bin), metadata carried over."""
    from sfdeploy.io import atomic_path

    from .onnx import read_metadata

    precision = check_precision(precision)
    xml, bin_ = ir_paths(out)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
    ov = import_openvino()
    props = read_metadata(onnx_path)
    source = "int8" if props.get("sfdeploy.precision") == "int8" else "fp32"
    model = ov.convert_model(str(onnx_path))
    write_rt_info(model, openvino_metadata(props, {"version": ov.get_version(), "precision": precision,
                                                   "source_precision": source, "device": "CPU"}))
    with atomic_path(xml) as tmp_xml, atomic_path(bin_) as tmp_bin:  # exits: .bin renamed first, then .xml
        written_bin = tmp_xml.with_suffix(".bin")  # save_model puts the weights next to the xml it writes
        try:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
            written_bin.replace(tmp_bin)
        finally:
            written_bin.unlink(missing_ok=True)
    return OpenVinoResult(xml=xml, bin=bin_, precision=precision, source_precision=source,
                          bytes=xml.stat().st_size + bin_.stat().st_size, openvino_version=ov.get_version())


def bf16_available() -> bool:
    """Whether this machine's CPU runs bf16 natively (OpenVINO's CPU capabilities)."""
    ov = import_openvino()
    return "BF16" in {c.upper() for c in cpu_capabilities(ov.Core())}


def check_ir(fp32_onnx: str | Path, xml: str | Path, images: list[np.ndarray], *, precision: str = "f32",
             tolerances: dict[str, float] | None = None) -> Any:
    """The IR at `precision` against ONNX Runtime on the fp32 graph (AgreementReport; does not raise).

    f32 of an fp32 source: F32_TOLERANCES; bf16 or an int8 source: the int8 agreement check's INT8_TOLERANCES."""
    from sfdeploy.serving.backends.openvino_backend import OpenVinoPredictor

    from .quant_check import check_agreement

    pred = OpenVinoPredictor(xml, precision=precision)
    source = (pred.metadata.get("openvino") or {}).get("source_precision", "fp32")
    exact = precision == "f32" and source == "fp32"
    tol = dict(F32_TOLERANCES if exact else {}, **(tolerances or {}))
    kind = f"openvino {precision}" + (" (int8 graph)" if source == "int8" else "")
    return check_agreement(fp32_onnx, xml, images, tolerances=tol, run_quantized=pred._infer, kind=kind)


def export_openvino(fp32_onnx: str | Path, out: str | Path, *, source_onnx: str | Path | None = None,
                    precision: str = "f32", verify: bool = True, calib: str | None = None,
                    staging: Path | None = None) -> tuple[OpenVinoResult, Any]:
    """Convert `source_onnx` (default: `fp32_onnx`; an int8 graph for --int8) to an IR in `staging` (default: a
    `temp_dir` next to `out`) and, with `verify`, hold it to `check_ir` against `fp32_onnx` at `precision`; only then
    move it to `out`. Returns (result, AgreementReport or None). A failed check raises AgreementError and leaves
    `out` as it was, byte for byte; the failed IR is kept beside it (`keep_failed_ir`). bf16 on a CPU without it: the
    IR is written (it runs bf16 elsewhere), the check is skipped with a warning."""
    from sfdeploy.io import temp_dir

    from .quant_check import AgreementError
    from .quantize import check_images

    xml, bin_ = ir_paths(out)
    if staging is None:
        with temp_dir(xml) as folder:
            return export_openvino(fp32_onnx, xml, source_onnx=source_onnx, precision=precision, verify=verify,
                                   calib=calib, staging=folder)
    staged = convert_onnx(source_onnx or fp32_onnx, Path(staging) / xml.name, precision=precision)
    report = None
    if verify and precision == "bf16" and not bf16_available():
        warnings.warn("this CPU has no native bf16: the IR was written but not checked at bf16 (it will not load "
                      "with precision bf16 here)", RuntimeWarning, stacklevel=2)
    elif verify:
        report = check_ir(fp32_onnx, staged.xml, check_images(calib), precision=precision)
        if not report.passed:
            report.quantized = str(keep_failed_ir(staged.xml, xml))
            raise AgreementError(report)
    replace_ir(staged.xml, xml)
    return replace(staged, xml=xml, bin=bin_), report


def keep_failed_ir(staged_xml: Path, out: Path) -> Path:
    """An IR that failed its check, moved out of the staging folder (which is deleted) for inspection as
    `<stem>.parity-failed.xml` + `.bin` next to `out` (a loadable pair). Returns the kept .xml."""
    kept = out.with_name(f"{out.stem}.parity-failed.xml")
    replace_ir(staged_xml, kept)
    return kept


def replace_ir(staged_xml: Path, xml: Path) -> None:
    """Move a staged IR pair (same folder or file system as `xml`) over `xml` + its .bin: the .bin, then the .xml,
    back to back. If the .xml rename fails, the old .bin is put back, so the old pair stays whole."""
    from sfdeploy.io import _fsync_dir, _fsync_file

    staged_bin, bin_ = staged_xml.with_suffix(".bin"), xml.with_suffix(".bin")
    for p in (staged_xml, staged_bin):
        _fsync_file(p)
    backup = None
    if bin_.is_file():
        backup = staged_bin.with_name(f"{staged_bin.stem}.previous.bin")
        try:
            os.link(bin_, backup)  # keeps the old weights reachable at no cost
        except OSError:
            shutil.copy2(bin_, backup)
    os.replace(staged_bin, bin_)
    try:
        os.replace(staged_xml, xml)
    except BaseException:
        if backup is not None:
            os.replace(backup, bin_)
        else:
            bin_.unlink(missing_ok=True)
        raise
    if backup is not None:
        backup.unlink(missing_ok=True)
    _fsync_dir(xml.parent)


def describe(res: OpenVinoResult) -> str:
    """The CLI's one line about the written IR."""
    src = " from the int8 (QDQ) graph" if res.source_precision == "int8" else ""
    return (f"wrote OpenVINO IR {res.xml} + {res.bin.name} ({res.bytes / 1e6:.1f} MB{src}, default precision "
            f"{res.precision}, OpenVINO {res.openvino_version})")

