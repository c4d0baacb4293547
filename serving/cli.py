"""`sfdeploy predict`, `sfdeploy serve`, `sfdeploy bench` (light: heavy imports happen inside the handlers)."""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path
from typing import Any

EXIT_SKIPPED = 3
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "tensorrt", "openvino")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("predict", help="detect objects in image files, folders or globs",
                              description="Run a checkpoint/.onnx/.engine on images; COCO-results JSON and/or "
                                          "rendered images out. Bad files are reported and skipped (exit code 3).")
    p.add_argument("artefact", metavar="ARTEFACT", help="checkpoint (.pt/.pth), .onnx, TensorRT .engine/.plan or OpenVINO .xml")
    p.add_argument("inputs", metavar="INPUTS", nargs="+", help="image files, folders (their images) or globs")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write COCO results JSON to OUT ('-' = stdout)")
    p.add_argument("--render", metavar="DIR", help="write images with boxes, labels and masks into DIR")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu; ONNX Runtime: best provider)")
    p.add_argument("--threshold", type=float, default=None, help="score threshold (default: the model's)")
    p.add_argument("--max-detections", type=int, default=None)
    p.add_argument("--no-masks", action="store_true", help="leave instance masks out of the JSON")
    p.set_defaults(handler=predict_command)

    s = subparsers.add_parser("serve", help="HTTP detection service (FastAPI + uvicorn)",
                              description="Serve one or more artefacts: GET /healthz, GET /v1/models, "
                                          "POST /v1/detect; OpenAPI at /docs and /openapi.json.")
    s.add_argument("artefacts", metavar="ARTEFACT", nargs="+")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="model name, once per ARTEFACT in order (default: file stem)")
    s.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    s.add_argument("--device", default=None)
    s.add_argument("--max-bytes", type=int, default=None, help="largest accepted upload (default 20 MiB)")
    s.add_argument("--max-pixels", type=int, default=None, help="largest accepted image (default 40 Mpx)")
    s.add_argument("--body-timeout", type=float, default=None, help="seconds to receive a request body (default 30)")
    s.add_argument("--header-timeout", type=float, default=None,
                   help="seconds for a new or idle connection to send request headers (default 10)")
    s.add_argument("--keep-alive", type=int, default=None, help="idle keep-alive seconds (default 5)")
    s.add_argument("--batch-window-ms", type=float, default=None,
                   help="batched graphs: how long to collect concurrent requests into one inference (default 5)")
    s.add_argument("--max-batch", type=int, default=None,
                   help="batched graphs: most images per inference (default 8; 1 = no batching)")
    s.add_argument("--max-queue", type=int, default=None,
                   help="detect requests per model waiting or running before 503 (default 64)")
    s.set_defaults(handler=serve_command)

    b = subparsers.add_parser("bench", help="latency/throughput (and optional AP) per artefact",
                              description="Median/p90 latency and images/s per artefact x size x batch after "
                                          "warm-up; --data adds COCO AP per artefact.")
    b.add_argument("artefacts", metavar="ARTEFACT", nargs="+")
    b.add_argument("--sizes", type=_int_list, default=[320, 640], help="square image sizes, e.g. 320,640")
    b.add_argument("--batch", type=_int_list, default=[1], help="batch sizes, e.g. 1,4")
    b.add_argument("--runs", type=int, default=20)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    b.add_argument("--device", default=None)
    b.add_argument("--data", metavar="DATA", default=None, help="also measure AP on DATA (e.g. synthetic:50)")
    b.add_argument("--data-split", default="val")
    b.add_argument("--max-images", type=int, default=None)
    b.add_argument("--json", action="store_true", help="rows as JSON on stdout (table still on stderr)")
    b.set_defaults(handler=bench_command)


# -- predict -------------------------------------------------------------------------------------------
def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their image files, sorted, not recursive) and globs -> (files, problems)."""
    files: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{item}: folder has no image files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                problems.append(f"{item}: no files match")
            files.extend(found)
        else:
            problems.append(f"{item}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def predict_command(args: argparse.Namespace) -> int:
    from sfdeploy.errors import UserError

    files, problems = expand_inputs(args.inputs)
    for msg in problems:
        print(f"sfdeploy predict: skipped {msg}", file=sys.stderr)
    if not files:
        raise UserError("no input images found (give image files, folders or globs)")

    import numpy as np
    from tqdm import tqdm

    from sfdeploy import processing
    from sfdeploy.io import atomic_path, atomic_write_text

    from . import load

    predictor = load(args.artefact, backend=args.backend, device=args.device)
    render_dir = Path(args.render) if args.render else None
    if render_dir:
        render_dir.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        from sfdeploy.viz import draw_detections
    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = [{"file": m.split(":")[0], "error": m} for m in problems]
    used_names: set[str] = set()
    for image_id, path in enumerate(tqdm(files, desc="predict", unit="img", file=sys.stderr), start=1):
        try:
            rgb = processing.load_image(path)
        except (processing.InvalidImageError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            tqdm.write(f"sfdeploy predict: skipped {exc}", file=sys.stderr)
            skipped.append({"file": str(path), "error": str(exc)})
            continue
        try:
            dets = predictor.predict_image(rgb, score_thresh=args.threshold, max_detections=args.max_detections,
                                           masks=not args.no_masks or render_dir is not None)
        except Exception as exc:  # noqa: BLE001 - one image's failure must not lose the others' results
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            msg = f"{path}: inference failed on a {rgb.shape[1]}x{rgb.shape[0]} image ({type(exc).__name__}" + \
                  (f": {reason})" if reason else ")")
            tqdm.write(f"sfdeploy predict: skipped {msg}", file=sys.stderr)
            skipped.append({"file": str(path), "error": msg})
            continue
        images.append({"id": image_id, "file_name": str(path), "height": int(rgb.shape[0]),
                       "width": int(rgb.shape[1]), "detections": len(dets)})
        for rec in dets.to_coco_results(image_id, masks=not args.no_masks):
            rec["file_name"] = str(path)
            results.append(rec)
        if render_dir:
            name = path.stem + ".jpg"
            k = 2
            while name in used_names:
                name, k = f"{path.stem}-{k}.jpg", k + 1
            used_names.add(name)
            drawn = draw_detections(rgb, dets)
            with atomic_path(render_dir / name) as tmp:
                Image.fromarray(np.asarray(drawn)).save(tmp, quality=92)
    if args.json_out:
        if args.json_out == "-":
            json.dump(results, sys.stdout)
            sys.stdout.write("\n")
        else:
            out = Path(args.json_out)
            atomic_write_text(out, json.dumps(results))
            index = out.with_name(out.stem + ".images.json")
            atomic_write_text(index, json.dumps({"artefact": str(args.artefact), "backend": predictor.backend,
                                                  "categories": [{"id": predictor.config.category_id(i + 1), "name": n}
                                                                 for i, n in enumerate(predictor.class_names)],
                                                  "images": images, "skipped": skipped}, indent=1))
            print(f"sfdeploy predict: {len(results)} detections in {len(images)} images -> {out} "
                  f"(image ids/file names in {index.name})", file=sys.stderr)
    if skipped:
        print(f"sfdeploy predict: {len(skipped)} input(s) skipped", file=sys.stderr)
        return EXIT_SKIPPED
    return 0


# -- serve / bench ---------------------------------------------------------------------------------------
def serve_command(args: argparse.Namespace) -> int:
    from . import server

    kwargs: dict[str, Any] = {}
    if args.max_bytes:
        kwargs["max_bytes"] = args.max_bytes
    if args.max_pixels:
        kwargs["max_pixels"] = args.max_pixels
    if args.body_timeout:
        kwargs["body_timeout"] = args.body_timeout
    kwargs["header_timeout"] = args.header_timeout
    kwargs["keep_alive"] = args.keep_alive
    kwargs.update(_batching_options(args))
    server.serve(args.artefacts, host=args.host, port=args.port, names=args.name, backend=args.backend,
                 device=args.device, **kwargs)
    return 0


def _batching_options(args: argparse.Namespace) -> dict[str, Any]:
    """--batch-window-ms / --max-batch / --max-queue as create_app keyword arguments (one-line errors)."""
    from sfdeploy.errors import UserError

    opts: dict[str, Any] = {}
    if args.batch_window_ms is not None:
        if not 0 <= args.batch_window_ms <= 1000:
            raise UserError(f"--batch-window-ms must be in 0..1000, got {args.batch_window_ms:g}")
        opts["batch_window_ms"] = args.batch_window_ms
    for flag, value, key in (("--max-batch", args.max_batch, "max_batch"), ("--max-queue", args.max_queue,
                                                                            "max_queue")):
        if value is not None:
            if value < 1:
                raise UserError(f"{flag} must be >= 1, got {value}")
            opts[key] = value
    return opts


def bench_command(args: argparse.Namespace) -> int:
    from .bench import markdown_table, run_bench

    rows = run_bench(args.artefacts, args.sizes, args.batch, runs=args.runs, warmup=args.warmup,
                     backend=args.backend, device=args.device, data=args.data, data_split=args.data_split,
                     max_images=args.max_images)
    print(markdown_table(rows), file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0
