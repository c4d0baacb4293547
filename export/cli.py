"""`sfdeploy export` and `sfdeploy verify` (light module: torch / onnx are imported inside the handlers)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from .formats import FORMATS, check_options, formats_help


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint to ONNX / TensorRT / a Triton repository / OpenVINO",
                              description=f"Formats: {formats_help()}.")
    p.add_argument("checkpoint", help="sfdeploy checkpoint (.pt)")
    p.add_argument("--format", default="onnx", choices=list(FORMATS), help="artefact format (default onnx)")
    p.add_argument("--out", required=True, help="output file (.onnx / .engine / openvino .xml) or folder (triton)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17; dynamo uses >= 18)")
    p.add_argument("--exporter", default=None, choices=["auto", "torchscript", "dynamo"],
                   help="torch ONNX exporter; auto = torchscript, falling back to dynamo (default auto)")
    p.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim (parity re-checked)")
    p.add_argument("--fp16", action="store_true", help="TensorRT: build an FP16 engine")
    p.add_argument("--min-size", type=int, default=None, help="TensorRT profile: smallest image side (default 32)")
    p.add_argument("--opt-size", type=int, default=None, help="TensorRT profile: side to optimise for (default 800)")
    p.add_argument("--max-size", type=int, default=None, help="TensorRT profile: largest image side (default 2048)")
    p.add_argument("--model-name", default=None, help="triton: model name (default: DETECTOR_METHOD)")
    p.add_argument("--instance-kind", default=None, choices=["auto", "cpu", "gpu"],
                   help="triton: instance kind (default auto: GPU for --engine, else CPU)")
    p.add_argument("--instance-count", type=int, default=None, help="triton: instances of the model (default 1)")
    p.add_argument("--engine", default=None, help="triton: use this TensorRT engine (tensorrt_plan backend)")
    p.add_argument("--int8", action="store_true",
                   help="INT8 static quantization (ONNX Runtime QDQ; Conv/Gemm only, post-processing stays float)")
    p.add_argument("--calib-data", default=None, help="--int8: calibration images, a DATA spec (its train split)")
    p.add_argument("--calib-images", type=int, default=None, help="--int8: number of calibration images (default 32)")
    p.add_argument("--calib-method", default=None, choices=["auto", "minmax", "percentile", "entropy"],
                   help="--int8: activation range estimator (default auto: percentile one-stage, minmax two-stage)")
    p.add_argument("--batch", default=None, choices=["1", "dynamic"],
                   help="batch dimension: 1 (default) or dynamic (one-stage detectors: letterboxed [B,3,S,S] in, "
                        "num_detections [B] + outputs padded to [B,K,...])")
    p.add_argument("--max-batch-size", type=int, default=None,
                   help="triton, --batch dynamic: max_batch_size of config.pbtxt (default 8)")
    p.add_argument("--max-queue-delay-us", type=int, default=None,
                   help="triton, --batch dynamic: dynamic_batching max_queue_delay_microseconds (default 100)")
    p.add_argument("--precision", default=None, choices=["f32", "bf16"],
                   help="openvino: default inference precision recorded in the IR (bf16 needs AVX-512 BF16/AMX; "
                        "default f32)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the parity check")
    p.add_argument("--data", default=None, help="extra real images for the parity check (a DATA spec)")
    p.add_argument("--json", action="store_true", help="print the export result as JSON on stdout")
    p.set_defaults(handler=_export)

    v = subparsers.add_parser("verify", help="parity of an exported .onnx against its checkpoint",
                              description="Runs PyTorch and ONNX Runtime on the same images at several sizes.")
    v.add_argument("artefact", help="exported .onnx file")
    v.add_argument("--checkpoint", required=True, help="the checkpoint it was exported from")
    v.add_argument("--data", default=None, help="real images to add (a DATA spec), besides synthetic ones")
    v.add_argument("--sizes", default="160,256", help="comma-separated image sizes (default 160,256)")
    v.add_argument("--json", action="store_true", help="JSON report per size on stdout")
    v.set_defaults(handler=_verify)


# export option name -> the flags that set it (export/formats.py says which formats accept which option)
_OPTION_FLAGS = {
    "opset": ("opset",), "exporter": ("exporter",), "simplify": ("simplify",), "fp16": ("fp16",),
    "sizes": ("min_size", "opt_size", "max_size"), "model_name": ("model_name",), "instance_kind": ("instance_kind",),
    "instance_count": ("instance_count",), "engine": ("engine",), "precision": ("precision",),
    "int8": ("int8", "calib_data", "calib_images", "calib_method"), "batch": ("batch",),
    "max_batch_size": ("max_batch_size",), "max_queue_delay_us": ("max_queue_delay_us",),
}


def _given_options(args: argparse.Namespace) -> set[str]:
    """The options the user gave (a store_true flag counts when True, any other flag when not None)."""
    def given(flag: str) -> bool:
        value = getattr(args, flag)
        return value is True if isinstance(value, bool) else value is not None

    return {option for option, flags in _OPTION_FLAGS.items() if any(given(f) for f in flags)}


def _check_args(args: argparse.Namespace) -> None:
    """Option errors, before anything is created on disk."""
    from sfdeploy.errors import UserError

    check_options(args.format, _given_options(args))
    if (args.calib_data is not None or args.calib_images is not None or args.calib_method is not None) \
            and not args.int8:
        raise UserError("--calib-data/--calib-images/--calib-method need --int8")
    if args.int8 and not args.calib_data:
        raise UserError("--int8 needs --calib-data DATA (calibration images from the training data)")
    if args.batch == "dynamic" and args.int8:
        raise UserError("--int8 is not available with --batch dynamic yet: export the batch-1 graph for int8")
    if (args.max_batch_size is not None or args.max_queue_delay_us is not None) and args.batch != "dynamic":
        raise UserError("--max-batch-size/--max-queue-delay-us need --batch dynamic (a batch-1 graph has no "
                        "batch dimension for Triton to fill)")
    if args.format == "openvino":
        from sfdeploy.serving.backends.openvino_runtime import import_openvino

        from .openvino import ir_paths

        ir_paths(args.out)  # a wrong --out suffix fails before the export
        import_openvino()  # and a missing package, before minutes of export, parity check and calibration


def _export(args: argparse.Namespace) -> int:
    """Triton (and OpenVINO, whose IR is converted from an intermediate ONNX graph): the graph is built and checked
    in a `temp_dir` next to the repository, never inside it (Triton polls
    the repository and would load a half-built or failed model), and copied in only when every check passed.
    --int8: the intermediate fp32 graph is staged the same way, so a killed export leaves nothing visible (a file
    named like the user's own `<stem>.fp32.onnx` is never touched) and the next export's cleanup removes the folder."""
    _check_args(args)
    if args.format not in ("triton", "openvino") and not args.int8:
        return _export_to(args, None)
    from sfdeploy.io import remove_stale_temp_files, temp_dir

    out = Path(args.out).resolve()  # `--out .` has no name to stage beside
    remove_stale_temp_files(out.parent, name=out.name)  # the staging folder of a killed earlier export
    with temp_dir(out) as staging:
        return _export_to(args, staging)


def _keep_failed_graph(failed: Path, out: Path) -> Path:
    """A graph that failed its check inside the staging folder, which is deleted: keep it for inspection as
    `<out>.parity-failed` (a Triton repository: next to it, where Triton does not look). Returns where it is."""
    out = out.resolve()
    if not failed.is_file():
        return failed
    kept = out.with_name(f"{out.name}.parity-failed")
    os.replace(failed, kept)  # the staging folder is next to `out`: same file system
    return kept


def _remove_old_staging(out: Path) -> None:
    """`<repository>/_staging`, where versions before 2026-12-02 built the graph and left it when an export failed.
    Removed only when it cannot be a model: plain files only, no config.pbtxt, no version folder."""
    old = out / "_staging"
    if old.is_dir() and not old.is_symlink() and all(p.is_file() and not p.is_symlink() and p.name != "config.pbtxt"
                                                     for p in old.iterdir()):
        shutil.rmtree(old, ignore_errors=True)


def _export_to(args: argparse.Namespace, staging: Path | None) -> int:
    from sfdeploy.errors import UserError

    batch = "dynamic" if args.batch == "dynamic" else 1
    from .onnx import DEFAULT_OPSET, export_onnx
    from .verify import ParityError

    out = Path(args.out)
    final_onnx = out if args.format == "onnx" else (out.with_suffix(".onnx") if args.format == "tensorrt"
                                                    else staging / "model.onnx")
    onnx_out = staging / f"{final_onnx.stem}.fp32.onnx" if args.int8 else final_onnx
    try:
        res = export_onnx(args.checkpoint, onnx_out, opset=args.opset or DEFAULT_OPSET,
                          exporter=args.exporter or "auto", simplify=args.simplify, verify=args.verify, data=args.data,
                          batch=batch)
    except ParityError as exc:
        if staging is not None:  # the failed graph is in the staging folder (--int8: the fp32 intermediate)
            beside = out if args.format in ("triton", "openvino") else out.with_name(onnx_out.name)
            exc.report.artefact = str(_keep_failed_graph(Path(exc.report.artefact), beside))
        print(exc.report.summary(), file=sys.stderr)
        if args.json:
            print(exc.report.to_json())
        return 1
    for a in res.attempts:
        print(f"note: {a}", file=sys.stderr)
    print(f"exported {res.path} ({res.bytes / 1e6:.1f} MB, {res.exporter}, opset {res.opset}, "
          f"{res.seconds:.1f} s)", file=sys.stderr)
    if res.parity is not None:
        print(res.parity.summary(), file=sys.stderr)
    payload: dict[str, Any] = res.to_dict()
    fp32_path = res.path  # openvino: the reference of the IR's check, removed after it
    if args.int8:
        from .quant_check import AgreementError
        from .quantize import DEFAULT_CALIB_IMAGES, quantize_checked

        try:
            qres, agreement = quantize_checked(res.path, final_onnx, args.calib_data,
                                               calib_images=args.calib_images or DEFAULT_CALIB_IMAGES,
                                               method=args.calib_method or "auto", verify=args.verify)
        except AgreementError as exc:
            if args.format in ("triton", "openvino"):  # staged: keep the failed graph beside --out
                exc.report.quantized = str(_keep_failed_graph(Path(exc.report.quantized), out))
            print(exc.report.summary(), file=sys.stderr)
            print(f"{out} was left as it was; the failed int8 graph is kept at {exc.report.quantized} for "
                  f"inspection. Calibrate with more or other images (--calib-images, --calib-data from the training "
                  f"data), try another --calib-method, or deploy the fp32 graph (export without --int8)",
                  file=sys.stderr)
            if args.json:
                print(json.dumps(exc.report.to_dict(), indent=2))
            return 1
        finally:
            if args.format != "openvino":
                res.path.unlink(missing_ok=True)
        print(f"quantized {qres.path} to int8 ({qres.bytes / 1e6:.1f} MB, {qres.quantized_nodes} tensors, "
              f"{qres.calibration['images']} calibration images, {qres.seconds:.1f} s)", file=sys.stderr)
        if agreement is not None:
            print(agreement.summary(), file=sys.stderr)
        payload["int8"] = {**qres.to_dict(), "agreement": agreement.to_dict() if agreement else None}
        payload["path"] = str(qres.path)
        res.path = qres.path
    if args.format == "tensorrt":
        from .tensorrt import build_engine, check_trt_ops

        check = check_trt_ops(res.path)
        print(check.summary(), file=sys.stderr)
        if not check.ok:
            raise UserError(check.summary())
        from sfdeploy.serving.backends.trt_runtime import DEFAULT_PROFILE

        engine = build_engine(res.path, out, fp16=args.fp16, min_size=args.min_size or DEFAULT_PROFILE["min"],
                              opt_size=args.opt_size or DEFAULT_PROFILE["opt"],
                              max_size=args.max_size or DEFAULT_PROFILE["max"])
        print(f"wrote {engine} and {engine}.json", file=sys.stderr)
        payload["engine"] = str(engine)
    elif args.format == "triton":
        from .triton import write_triton_repository

        if args.engine is not None and not Path(args.engine).is_file():
            raise FileNotFoundError(f"engine not found: {args.engine}")
        model_dir = write_triton_repository(res.path, out, model_name=args.model_name, engine_path=args.engine,
                                            instance_kind=args.instance_kind or "auto",
                                            instance_count=1 if args.instance_count is None else args.instance_count,
                                            **_dynamic_batching_options(args))
        _remove_old_staging(out)
        print(f"wrote Triton model repository {model_dir}", file=sys.stderr)
        payload["triton_model"] = str(model_dir)
    elif args.format == "openvino":
        from .openvino import describe, export_openvino
        from .quant_check import AgreementError

        try:
            ov_res, report = export_openvino(fp32_path, out, source_onnx=res.path, precision=args.precision or "f32",
                                             verify=args.verify, calib=args.calib_data, staging=staging)
        except AgreementError as exc:
            print(exc.report.summary(), file=sys.stderr)
            print(f"{out} was left as it was; the failed IR is kept at {exc.report.quantized} (+ .bin) for "
                  "inspection", file=sys.stderr)
            if args.json:
                print(json.dumps(exc.report.to_dict(), indent=2))
            return 1
        finally:
            fp32_path.unlink(missing_ok=True)
            res.path.unlink(missing_ok=True)
        print(describe(ov_res), file=sys.stderr)
        if report is not None:
            print(report.summary(), file=sys.stderr)
        payload["openvino"] = {**ov_res.to_dict(), "check": report.to_dict() if report else None}
        payload["path"] = str(ov_res.xml)
    if args.json:
        print(json.dumps(payload, indent=2))
    return 0


def _dynamic_batching_options(args: argparse.Namespace) -> dict[str, int]:
    """Triton's dynamic batching settings given on the command line (defaults in export/triton.py)."""
    opts = {}
    if args.max_batch_size is not None:
        opts["max_batch_size"] = args.max_batch_size
    if args.max_queue_delay_us is not None:
        opts["max_queue_delay_us"] = args.max_queue_delay_us
    return opts


def _verify(args: argparse.Namespace) -> int:
    from sfdeploy.errors import UserError

    try:
        sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--sizes must be comma-separated integers, got {args.sizes!r}") from None
    if not sizes or min(sizes) < 32:
        raise UserError("--sizes needs at least one size >= 32")
    from .verify import verify_artefact

    report = verify_artefact(args.artefact, args.checkpoint, sizes=sizes, data=args.data)
    print(report.summary(), file=sys.stderr)
    if args.json:
        print(json.dumps({"passed": report.passed, "artefact": report.artefact, "tolerances": report.tolerances,
                          "sizes": report.by_size()}, indent=2))
    return 0 if report.passed else 1
