"""INT8 post-training static quantization of an exported ONNX graph with ONNX Runtime's own tools.

Why ONNX Runtime's `quantize_static` (QDQ format): the artefact stays one portable `.onnx` file that the existing
serving backend loads unchanged, and ORT runs the QDQ pairs as VNNI/AMX int8 kernels on x86 CPUs (and TensorRT
reads QDQ graphs too). Only the network's `Conv` / `Gemm` ops are quantized; everything after them (box decoding,
score sigmoid, NMS, top-k, mask paste) stays float, so the graph's outputs keep the fp32 contract. Activation
ranges come from calibration images of the *training* data (a DATA spec, e.g. `synthetic:200` or a VOC root).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager, redirect_stdout
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

CALIBRATION_METHODS = ("auto", "minmax", "percentile", "entropy")
TWO_STAGE = ("faster_rcnn", "mask_rcnn")
QUANT_OP_TYPES = ("Conv", "Gemm")  # the network; MatMul is left out: the mask paste (post-processing) uses it
DEFAULT_CALIB_IMAGES = 32
# staging folders of versions before 2026-12-02 (tempfile's `.quant-XXXXXXXX`, no pid, no lock) and what they held
_LEGACY_STAGING = re.compile(r"^\.quant-[a-z0-9_]{8}$")
_LEGACY_FILES = frozenset({"model.int8.onnx", "final.onnx"})
LEGACY_STAGING_MIN_AGE_S = 3600.0
_TEMPDIR_LOCK = threading.Lock()


@dataclass
class QuantizeResult:
    path: Path
    seconds: float
    bytes: int
    calibration: dict[str, Any] = field(default_factory=dict)
    quantized_nodes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "seconds": round(self.seconds, 3), "bytes": self.bytes,
                "calibration": self.calibration, "quantized_nodes": self.quantized_nodes}


def calibration_images(spec: str, count: int, *, split: str = "train", images_dir: str | None = None,
                       seed: int = 0, size: int | None = None) -> list[np.ndarray]:
    """`count` images spread evenly over the dataset, each float32 [1,3,H,W] in [0,1]. With `size`, each is resized
    to size x size: ORT's histogram calibrators (percentile, entropy) stack every tensor over the images, so all
    activations must have one shape (the graph resizes to its own input size anyway)."""
    import torch
    import torch.nn.functional as F

    from sfdeploy.data import build_dataset
    from sfdeploy.errors import UserError

    ds = build_dataset(spec, split=split, images_dir=images_dir, seed=seed)
    if len(ds) == 0:
        raise UserError(f"calibration data {spec!r} ({split} split) has no images")
    idx = np.unique(np.linspace(0, len(ds) - 1, num=min(count, len(ds))).round().astype(int))
    out = []
    for i in idx:
        img: torch.Tensor = ds[int(i)][0][None]
        if size is not None:
            img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        out.append(img.numpy().astype(np.float32))
    return out


class _Reader:
    """ORT CalibrationDataReader over in-memory images (duck-typed: ORT only calls get_next/rewind)."""

    def __init__(self, images: list[np.ndarray], input_name: str = "images") -> None:
        self.images = images
        self.input_name = input_name
        self._it: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        img = next(self._it, None)
        return None if img is None else {self.input_name: img}

    def rewind(self) -> None:
        self._it = iter(self.images)


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@contextmanager
def _temp_files_in(folder: Path) -> Iterator[None]:
    """Point `tempfile.tempdir` (the stdlib's documented default for `dir`) at `folder` while ORT quantizes.

    Why: `quantize_static` keeps its `ort.quant.*` folders (shape-inferred and augmented model copies) in
    `tempfile.TemporaryDirectory(prefix="ort.quant.")` with no `dir` argument and offers no option for it; a SIGKILL
    left them in the system temp dir. Inside our `temp_dir` staging folder the stale-temp cleanup removes them. The
    setting is process-wide while it lasts: quantizations are serialised by a lock, and other threads of the same
    process that create temp files meanwhile get them in `folder` too (deleted with it)."""
    with _TEMPDIR_LOCK:
        previous = tempfile.tempdir
        tempfile.tempdir = str(folder)
        try:
            yield
        finally:
            tempfile.tempdir = previous


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    from sfdeploy.errors import UserError

    table = {"auto": None, "minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}
    if name not in table:
        raise UserError(f"unknown calibration method {name!r}: choose one of {', '.join(CALIBRATION_METHODS)}")
    return table[name]


def remove_legacy_staging(folder: Path, now: float | None = None) -> list[Path]:
    """Delete `.quant-XXXXXXXX` folders that quantizations killed under older versions left in `folder`. Their
    writer cannot be told apart from a live one, so only unambiguous ones go: tempfile's name, nothing inside but the
    files those versions wrote, and untouched for LEGACY_STAGING_MIN_AGE_S."""
    now = time.time() if now is None else now
    removed = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        if not _LEGACY_STAGING.match(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        inside = list(entry.iterdir())
        if any(p.name not in _LEGACY_FILES or p.is_symlink() or not p.is_file() for p in inside):
            continue
        if now - max([entry.stat().st_mtime] + [p.stat().st_mtime for p in inside]) < LEGACY_STAGING_MIN_AGE_S:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed


def quantize_int8(onnx_in: str | Path, onnx_out: str | Path, calib: str | list[np.ndarray], *,
                  calib_images: int = DEFAULT_CALIB_IMAGES, method: str = "auto", per_channel: bool = True,
                  images_dir: str | None = None, exclude: tuple[str, ...] = ()) -> QuantizeResult:
    """Quantize `onnx_in` (an sfdeploy fp32 graph) to a QDQ int8 graph at `onnx_out` (written atomically).

    `calib` is a DATA spec (its train split is used) or a list of float32 [1,3,H,W] images. Metadata is kept and
    `sfdeploy.precision` = "int8" plus `sfdeploy.quantization` (JSON of the settings) are added.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from sfdeploy.errors import UserError
    from sfdeploy.io import atomic_path, remove_stale_temp_files, temp_dir

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if not onnx_in.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_in}")
    if calib_images < 1:
        raise UserError("--calib-images must be >= 1")
    _method(method)  # validates the name
    t0 = time.perf_counter()
    src = onnx.load(str(onnx_in))
    props = {p.key: p.value for p in src.metadata_props}
    detector = props.get("detector", "")
    if method == "auto":  # percentile (more accurate, docs/EXPORT.md) where ORT can collect its histograms
        method = "minmax" if detector in TWO_STAGE else "percentile"
    elif method != "minmax" and detector in TWO_STAGE:
        raise UserError(f"--calib-method {method} needs activations of one shape over the calibration images; "
                        f"{detector}'s RoI heads see a different number of boxes per image: use minmax (or auto)")
    cal_method = _method(method)
    side = json.loads(props.get("sfdeploy.config", "{}")).get("max_size")
    images = calibration_images(calib, calib_images, images_dir=images_dir, size=side) if isinstance(calib, str) \
        else calib
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(onnx_out.parent, name=onnx_out.name)  # left by a killed earlier quantization
    remove_legacy_staging(onnx_out.parent)
    with temp_dir(onnx_out) as tmp:
        tmp_out = tmp / "model.int8.onnx"
        # ORT's calibrators print progress to stdout and log a pre-processing hint: keep stdout for --json
        with redirect_stdout(io.StringIO()), _quiet_root_logger(), _temp_files_in(tmp):
            quantize_static(src, tmp_out, _Reader(images), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANT_OP_TYPES), per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(exclude), calibrate_method=cal_method,
                            extra_options={"CalibTensorRangeSymmetric": False, "WeightSymmetric": True,
                                           "CalibMovingAverage": False})
        q = onnx.load(str(tmp_out))
        settings = {"method": method, "images": len(images), "data": calib if isinstance(calib, str) else "arrays",
                    "op_types": list(QUANT_OP_TYPES), "per_channel": per_channel, "format": "QDQ",
                    "activations": "uint8", "weights": "int8", "excluded": list(exclude)}
        del q.metadata_props[:]
        for k, v in {**props, "sfdeploy.precision": "int8", "sfdeploy.quantization": json.dumps(settings)}.items():
            q.metadata_props.add(key=k, value=v)
        q.producer_name = "sfdeploy"
        onnx.checker.check_model(q)
        with atomic_path(onnx_out) as staged:
            onnx.save(q, str(staged))
        n_q = sum(1 for n in q.graph.node if n.op_type == "QuantizeLinear")
    return QuantizeResult(path=onnx_out, seconds=time.perf_counter() - t0, bytes=onnx_out.stat().st_size,
                          calibration=settings, quantized_nodes=n_q)


def check_images(calib: str | None, sizes: tuple[int, ...] = (256, 320)) -> list[np.ndarray]:
    """Images for the agreement check, none of them used for calibration: synthetic val scenes (+ two val images of
    the calibration DATA) at `sizes` in three orientations; the blank image of the parity set is left out (its
    exactly tied scores make 'the same top-k' ill-defined)."""
    from .verify import parity_images

    return [img[None] for name, img in parity_images(sizes, calib) if not name.startswith("blank")]


def quantize_checked(fp32_path: str | Path, out: str | Path, calib: str, *, calib_images: int = DEFAULT_CALIB_IMAGES,
                     method: str = "auto", verify: bool = True, images_dir: str | None = None,
                     tolerances: dict[str, float] | None = None) -> tuple[QuantizeResult, Any]:
    """quantize_int8 + (verify) the agreement check against the fp32 graph. Returns (result, AgreementReport or None).

    Like the fp32 export, `out` is replaced only by a graph that passed: the int8 graph is quantized and checked in a
    `temp_dir` next to `out`; on a failed check `out` stays as it was, the graph is kept as `<out>.parity-failed` for
    inspection (`report.quantized` says where) and AgreementError is raised."""
    from sfdeploy.io import atomic_path, remove_stale_temp_files, temp_dir

    from .quant_check import AgreementError, check_agreement

    if not verify:
        return quantize_int8(fp32_path, out, calib, calib_images=calib_images, method=method,
                             images_dir=images_dir), None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out.parent, name=out.name)  # left by a killed earlier quantization
    remove_legacy_staging(out.parent)
    with temp_dir(out) as tmp:
        res = quantize_int8(fp32_path, tmp / out.name, calib, calib_images=calib_images, method=method,
                            images_dir=images_dir)
        report = check_agreement(fp32_path, res.path, check_images(calib), tolerances=tolerances)
        if not report.passed:
            failed = out.with_name(f"{out.name}.parity-failed")
            os.replace(res.path, failed)  # the staging folder is next to `out`: same file system
            report.quantized = str(failed)
            raise AgreementError(report)
        with atomic_path(out) as staged:
            os.replace(res.path, staged)
    res.path, report.quantized = out, str(out)
    return res, report
