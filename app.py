"""Gradio demo: a baseline detector and its Sampling-Free twin, side by side.

    python app.py [--models DIR] [--host 127.0.0.1] [--port N] [--share false] [--allow-train]
    sfdeploy demo [--models DIR] [--host HOST] [--port N] [--allow-train]

DIR (default: $SFDEPLOY_MODELS, else runs/quickstart) is scanned for checkpoints (`*.pt` in run folders; best.pt
is preferred over last.pt), ONNX exports (`*.onnx`) and TensorRT engines (`*.engine`). They are grouped by
detector family and paired (baseline vs Sampling-Free) from the metadata that `serving.load` reads. The demo
uses the `serving` API only (plus `sfdeploy.viz` to draw): it contains no model code of its own.

Both models run once per image; the raw detections are kept in the session state, so moving a score-threshold
slider only filters and redraws them. Sampling-Free scores are calibrated to the (small) foreground rate, so each
panel has its own threshold, defaulting to its model's own operating threshold (effective_score_thresh).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import json
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sfdeploy import limits

log = logging.getLogger("sfdeploy.demo")

ENV_MODELS = "SFDEPLOY_MODELS"
DEFAULT_MODELS_DIR = "runs/quickstart"
BACKEND_LABELS = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}
SUFFIX_BACKEND = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt",
                  ".plan": "tensorrt"}
FAMILY_LABELS = {"retinanet": "RetinaNet", "fcos": "FCOS", "faster_rcnn": "Faster R-CNN", "mask_rcnn": "Mask R-CNN"}
FAMILY_ORDER = tuple(FAMILY_LABELS)
ROLES = ("baseline", "sampling_free")
ROLE_LABELS = {"baseline": "Baseline", "sampling_free": "Sampling-Free"}
# The left panel shows the paper's baseline (focal loss / biased sampling); "ce" (plain cross-entropy, an
# ablation) stands in only when a family has no baseline run.
ROLE_METHODS = {"baseline": ("baseline", "ce"), "sampling_free": ("sampling_free",)}
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".cache", "wandb", "tensorboard"}
MAX_SCAN_DEPTH = 6
# Uploads get the HTTP service's caps (sfdeploy.limits): gradio refuses bigger files at /upload, load_input checks
# every file's size and raw_upload_path every inline data: URL's size before decoding; pixels are checked from the
# header before decoding; bigger-than-screen images are shown (and run) downscaled to keep the UI responsive.
MAX_UPLOAD_BYTES = limits.MAX_IMAGE_BYTES
MAX_PIXELS = limits.MAX_IMAGE_PIXELS
# gradio keeps every upload and every rendered panel in its cache: every 5 minutes, files older than 15 are deleted
# (and the whole cache when the server stops).
DELETE_CACHE = (300, 900)
DISPLAY_MAX_SIDE = 1280
PREDICTOR_CACHE = 4
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

QUICKSTART_HINT = (
    "Train the tiny built-in pair (a baseline and a Sampling-Free model on the synthetic shapes data, a few "
    "minutes on a CPU) with\n\n```\nsfdeploy quickstart --out {dir}\n```\n\nthen restart the demo with "
    "`python app.py --models {dir}` (or press **Rescan**){train}. "
    "Your own runs work too: `sfdeploy train ... --out {dir}/<run>` for each method, and optionally "
    "`sfdeploy export` next to them for the ONNX Runtime backend."
)
TRAIN_ENABLED_HINT = ", or press the button below to train them from here"
# Training writes models into the served folder and takes the CPU for minutes: only the operator can enable it.
TRAIN_DISABLED_HINT = " (training from this page is off: start the demo with `--allow-train` to enable it)"
THRESHOLD_HELP = (
    "**Why two thresholds?** A focal-loss baseline scores detections around 0.05-1, while Sampling-Free scores "
    "are calibrated to the true (tiny) foreground rate, so its good detections can score 0.001-0.05. One "
    "threshold would either drown the baseline in boxes or hide most Sampling-Free detections. Each slider starts "
    "at its model's own operating threshold (`effective_score_thresh`, also its minimum: the models do not "
    "return lower scores). Moving a slider only redraws the panels, it does not re-run the models."
)


# ---------------------------------------------------------------------------------------------------------
# serving access (lazy: `import app` stays light)
# ---------------------------------------------------------------------------------------------------------
def _serving() -> Any:
    import serving

    return serving


def default_loader(path: str | Path, backend: str) -> Any:
    """serving.load with the device each backend needs (TensorRT runs on the GPU, the rest on the CPU)."""
    device = {"torch": "cpu", "onnxruntime": None, "tensorrt": "cuda"}.get(backend)  # ORT: best provider
    return _serving().load(str(path), backend=backend, device=device)


def _image_loader() -> Callable[..., np.ndarray]:
    serving = _serving()
    fn = getattr(serving, "load_image", None)
    if fn is None:  # serving re-exports the shared loader; older trees only have it in sfdeploy.processing
        from sfdeploy.processing import load_image as fn
    return fn


def _draw(image: np.ndarray, detections: Any, score_thresh: float) -> np.ndarray:
    from sfdeploy.viz import draw_detections

    return draw_detections(image, detections, score_thresh=score_thresh)


def backend_support() -> dict[str, str | None]:
    """backend -> None when it can run here, else the reason it cannot."""
    import importlib.util

    serving = _serving() if importlib.util.find_spec("serving") else None
    probe = getattr(serving, "available_backends", None) if serving is not None else None
    if callable(probe):
        try:
            found = probe()
            if isinstance(found, dict):
                return {b: (None if found.get(b) in (True, None) else str(found.get(b))) for b in BACKEND_LABELS}
            found = set(found)
            return {b: None if b in found else f"{BACKEND_LABELS[b]} is not installed" for b in BACKEND_LABELS}
        except Exception:  # noqa: BLE001 - fall back to the import checks below
            pass
    out: dict[str, str | None] = {"torch": None}
    out["onnxruntime"] = None if importlib.util.find_spec("onnxruntime") else (
        "onnxruntime is not installed (pip install onnxruntime)")
    if not importlib.util.find_spec("tensorrt"):
        out["tensorrt"] = "TensorRT is not installed (pip install 'sfdeploy[tensorrt]'; needs an NVIDIA GPU)"
    else:
        out["tensorrt"] = None
    return out


# ---------------------------------------------------------------------------------------------------------
# predictor cache
# ---------------------------------------------------------------------------------------------------------
class ModelStore:
    """Loaded predictors keyed by (path, backend), least recently used evicted beyond `capacity`."""

    def __init__(self, loader: Callable[[str | Path, str], Any] | None = None, capacity: int = PREDICTOR_CACHE,
                 warmup: bool = True) -> None:
        self.loader = loader or default_loader
        self.capacity = max(1, int(capacity))
        self.warmup = warmup
        self.loads = 0
        self._cache: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | Path, backend: str) -> Any:
        key = (str(Path(path).resolve()), backend)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            predictor = self.loader(key[0], backend)
            self.loads += 1
            if self.warmup and hasattr(predictor, "warmup"):
                try:  # first-call costs (allocations, ORT graph setup) would otherwise show up as latency
                    predictor.warmup(size=128)
                except Exception:  # noqa: BLE001 - a failing warm-up shows up on the real call instead
                    log.debug("warm-up failed for %s", key, exc_info=True)
            self._cache[key] = predictor
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
            return predictor

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


# ---------------------------------------------------------------------------------------------------------
# discovery and pairing
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Artifact:
    """One loadable model file and what its metadata says about it."""

    path: Path
    backend: str
    detector: str
    method: str
    backbone: str
    class_names: list[str]
    score_thresh: float
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    mtime: float = 0.0
    name: str = ""

    @property
    def identity(self) -> tuple[Any, ...]:
        return (self.backbone, tuple(self.class_names))


@dataclass
class Family:
    detector: str
    sides: dict[str, dict[str, Artifact]] = field(default_factory=lambda: {r: {} for r in ROLES})

    @property
    def label(self) -> str:
        return FAMILY_LABELS.get(self.detector, self.detector)

    @property
    def backends(self) -> list[str]:
        found = {b for side in self.sides.values() for b in side}
        return [b for b in BACKEND_LABELS if b in found]

    def artifact(self, role: str, backend: str) -> Artifact | None:
        return self.sides[role].get(backend)

    def representative(self, role: str) -> Artifact | None:
        side = self.sides[role]
        for b in BACKEND_LABELS:
            if b in side:
                return side[b]
        return None


@dataclass
class Catalog:
    root: Path | None
    families: dict[str, Family] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.families)


def find_model_files(root: str | Path) -> list[Path]:
    """Checkpoints (best.pt > last.pt > any other .pt, per folder), .onnx and .engine files under `root`."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".") and depth < MAX_SCAN_DEPTH)
        names = sorted(f for f in files if not f.startswith("."))
        pts = [f for f in names if f.endswith((".pt", ".pth"))]
        if "best.pt" in pts:
            pts = ["best.pt"]
        elif "last.pt" in pts:
            pts = ["last.pt"]
        found += [Path(folder) / f for f in pts]
        found += [Path(folder) / f for f in names if f.endswith((".onnx", ".engine", ".plan"))]
    return found


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


def training_meta(metadata: Any) -> dict[str, Any]:
    """The checkpoint `meta` inside a predictor's metadata (serving's parsed form, raw ONNX props, or meta)."""
    md = _as_dict(metadata)
    for key in ("meta", "sfdeploy.meta"):
        if key in md:
            return _as_dict(md[key])
    return md if "metrics" in md else {}


def describe(path: Path, store: ModelStore, root: Path | None = None) -> Artifact:
    """Load `path` through serving (cached) and read what the demo needs from the predictor."""
    backend = SUFFIX_BACKEND[path.suffix]
    predictor = store.get(path, backend)
    cfg = predictor.config
    meta = training_meta(getattr(predictor, "metadata", {}))
    metrics = getattr(predictor, "metrics", None)
    if not isinstance(metrics, dict) or not metrics:
        metrics = _as_dict(meta.get("metrics"))
    try:
        name = str(path.relative_to(root)) if root else str(path)
    except ValueError:
        name = str(path)
    return Artifact(path=path, backend=backend, detector=cfg.detector, method=cfg.method, backbone=cfg.backbone,
                    class_names=list(cfg.class_names), score_thresh=float(cfg.effective_score_thresh),
                    metrics=dict(metrics), meta=meta, mtime=path.stat().st_mtime, name=name)


def pair_artifacts(artifacts: Sequence[Artifact]) -> dict[str, Family]:
    """Group by detector; per family pick one baseline and one Sampling-Free model (same backbone and classes
    preferred, newest first) and, for each, its file per backend."""
    families: dict[str, Family] = {}
    by_detector: dict[str, list[Artifact]] = collections.defaultdict(list)
    for a in artifacts:
        by_detector[a.detector].append(a)
    for detector, items in by_detector.items():
        family = Family(detector)

        def candidates(role: str) -> list[Artifact]:
            for method in ROLE_METHODS[role]:
                picked = [a for a in items if a.method == method]
                if picked:
                    # newest first; a PyTorch checkpoint is the reference of a run
                    return sorted(picked, key=lambda a: (a.mtime, a.backend == "torch"), reverse=True)
            return []

        sf, base = candidates("sampling_free"), candidates("baseline")
        anchor_sf = sf[0] if sf else None
        anchor_base = base[0] if base else None
        if anchor_sf is not None and base:
            same = [a for a in base if a.identity == anchor_sf.identity]
            anchor_base = same[0] if same else base[0]
        for role, anchor, pool in (("sampling_free", anchor_sf, sf), ("baseline", anchor_base, base)):
            if anchor is None:
                continue
            for a in pool:  # newest first: the first file per backend with the anchor's identity wins
                if a.identity == anchor.identity and a.method == anchor.method:
                    family.sides[role].setdefault(a.backend, a)
        families[detector] = family
    return {d: families[d] for d in sorted(families, key=lambda d: (FAMILY_ORDER + (d,)).index(d))}


def discover(models_dir: str | Path | None, store: ModelStore) -> Catalog:
    """Scan `models_dir` and build the families; unreadable files are listed in `skipped`, not fatal."""
    if models_dir is None:
        return Catalog(None)
    root = Path(models_dir).expanduser()
    catalog = Catalog(root)
    support = None
    artifacts = []
    for path in find_model_files(root):
        backend = SUFFIX_BACKEND[path.suffix]
        if backend != "torch":
            support = support or backend_support()
            if support.get(backend):
                catalog.skipped.append(f"{path.name}: {support[backend]}")
                continue
        try:
            artifacts.append(describe(path, store, root))
        except Exception as exc:  # noqa: BLE001 - one bad file must not take the demo down
            reason = _one_line(exc).replace(str(path), path.name)
            catalog.skipped.append(f"{_rel(path, root)}: {reason[:140]}{'…' if len(reason) > 140 else ''}")
            log.info("skipping %s: %s", path, _one_line(exc))
    catalog.families = pair_artifacts(artifacts)
    return catalog


def backend_choices(family: Family | None) -> tuple[list[tuple[str, str]], str]:
    """Radio choices (label, backend) usable for this family, and a note on the others and why not."""
    if family is None:
        return [], ""
    support = backend_support()
    usable = family.backends
    notes = []
    for b, label in BACKEND_LABELS.items():
        if b in usable:
            missing = [ROLE_LABELS[r] for r in ROLES if b not in family.sides[r]]
            if missing:
                notes.append(f"{label}: no {' / '.join(missing)} file")
            continue
        reason = support.get(b)
        if reason is None:
            ext = {"torch": ".pt checkpoint", "onnxruntime": ".onnx export (see `sfdeploy export --help`)",
                   "tensorrt": "TensorRT engine (.engine, built by `sfdeploy export` on an NVIDIA GPU)"}[b]
            reason = f"no {ext} for {family.label}"
        notes.append(f"{label} unavailable: {reason}")
    return [(BACKEND_LABELS[b], b) for b in usable], "  \n".join(notes)


# ---------------------------------------------------------------------------------------------------------
# inference (runs the models) and rendering (never does)
# ---------------------------------------------------------------------------------------------------------
class BadImage(ValueError):
    """The upload is not a usable image; the message is shown to the user."""


@dataclass(frozen=True)
class RejectedUpload:
    """What raw_upload_path hands on for an upload refused before decoding; load_input turns it into BadImage."""

    reason: str


def _too_big(size: int) -> str:
    return (f"the upload is {size / 2**20:.1f} MB, over the limit of {MAX_UPLOAD_BYTES / 2**20:.0f} MB "
            "(the same as the HTTP service's)")


def load_input(path: str | Path | bytes | RejectedUpload | None) -> tuple[np.ndarray, str]:
    """Upload (file path, or the bytes of an inline data: URL) -> (uint8 HWC RGB, note). Bytes and pixels are
    checked against the service's caps before decoding; big images are downscaled."""
    if path is None:
        raise BadImage("no image")
    if isinstance(path, RejectedUpload):
        raise BadImage(path.reason)
    if isinstance(path, (bytes, bytearray)):
        source: Any = bytes(path)
        size = len(source)
    else:
        source = str(path)
        try:
            size = os.stat(source).st_size
        except OSError:
            raise BadImage("the upload did not arrive; please try again") from None
    if size > MAX_UPLOAD_BYTES:
        raise BadImage(_too_big(size))
    try:
        image = _image_loader()(source, max_pixels=MAX_PIXELS, name="the upload")
    except FileNotFoundError:
        raise BadImage("the upload did not arrive; please try again") from None
    except (ValueError, OSError, MemoryError) as exc:  # InvalidImageError / ImageTooLargeError are ValueErrors
        raise BadImage(_one_line(exc)) from None
    note = ""
    h, w = image.shape[:2]
    if max(h, w) > DISPLAY_MAX_SIDE:
        from PIL import Image

        scale = DISPLAY_MAX_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        note = f"downscaled from {w}x{h} to {size[0]}x{size[1]} for the demo"
    return np.ascontiguousarray(image), note


def run_pair(store: ModelStore, family: Family, backend: str, image: np.ndarray) -> dict[str, Any]:
    """Run both models of `family` on `image` once; the result is the raw state the sliders filter."""
    panels: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        art = family.artifact(role, backend)
        panel: dict[str, Any] = {"role": role, "artifact": art, "detections": None, "latency_ms": None,
                                 "error": None, "floor": art.score_thresh if art else 0.0}
        if art is None:
            what = "model" if not family.sides[role] else f"{BACKEND_LABELS[backend]} file"
            panel["error"] = f"no {ROLE_LABELS[role]} {what} for {family.label} in the models folder"
        else:
            try:
                predictor = store.get(art.path, backend)
                floor = float(getattr(predictor, "score_thresh", art.score_thresh))
                t0 = time.perf_counter()
                dets = predictor.predict(image, score_thresh=floor)
                panel["latency_ms"] = (time.perf_counter() - t0) * 1e3
                panel["detections"] = dets
                panel["floor"] = floor
            except Exception as exc:  # noqa: BLE001 - show it in the panel, keep the app alive
                log.warning("%s failed on %s: %s", art.name, backend, traceback.format_exc())
                panel["error"] = f"{ROLE_LABELS[role]} model failed: {_one_line(exc)}"
        panels[role] = panel
    return {"image": image, "family": family.detector, "backend": backend, "panels": panels}


def count_above(detections: Any, thresh: float) -> int:
    if detections is None:
        return 0
    return int((np.asarray(detections.scores) >= thresh).sum())


def render_panel(image: np.ndarray, panel: dict[str, Any], thresh: float) -> tuple[np.ndarray | None, str]:
    """Draw one panel's detections at `thresh` (no inference) -> (image or None, caption markdown)."""
    role = ROLE_LABELS[panel["role"]]
    art: Artifact | None = panel["artifact"]
    if panel["error"]:
        return None, f"**{role}** — ⚠️ {panel['error']}"
    dets = panel["detections"]
    thresh = max(float(thresh), float(panel["floor"]))
    n = count_above(dets, thresh)
    drawn = _draw(image, dets, thresh)
    what = f"{art.backbone} · {art.method}" if art else ""
    caption = (f"**{role}** ({what}) — **{n}** detection{'s' if n != 1 else ''} ≥ {thresh:.4g} · "
               f"**{panel['latency_ms']:.0f} ms** ({BACKEND_LABELS.get(art.backend, art.backend) if art else ''})")
    return drawn, caption


def render(raw: dict[str, Any] | None, thresh_base: float, thresh_sf: float) -> tuple[Any, ...]:
    """(baseline image, caption, Sampling-Free image, caption, compare pair) for the current sliders."""
    if not raw:
        return None, "**Baseline** — upload an image", None, "**Sampling-Free** — upload an image", None
    out: list[Any] = []
    for role, thr in zip(ROLES, (thresh_base, thresh_sf)):
        out += list(render_panel(raw["image"], raw["panels"][role], thr))
    pair = (out[0], out[2]) if out[0] is not None and out[2] is not None else None
    return out[0], out[1], out[2], out[3], pair


def metrics_rows(family: Family | None) -> list[list[str]]:
    """The evaluation table: metric, baseline, Sampling-Free (from the checkpoints' metadata)."""
    if family is None:
        return []
    arts = [family.representative(r) for r in ROLES]
    rows: list[list[str]] = []
    for kind in ("bbox", "segm"):
        for key in METRIC_KEYS:
            values = [_as_dict(a.metrics.get(kind)).get(key) if a else None for a in arts]
            if any(isinstance(v, (int, float)) for v in values):
                rows.append([f"{kind} {key}", *(_fmt(v) for v in values)])
    if not rows:
        rows.append(["metrics", *("not recorded" if a else "—" for a in arts)])
    rows.append(["backbone", *((a.backbone if a else "—") for a in arts)])
    rows.append(["method", *((a.method if a else "—") for a in arts)])
    rows.append(["training steps", *(_fmt(a.meta.get("step")) if a else "—" for a in arts)])
    rows.append(["outcome", *(str(a.meta.get("outcome", "—")) if a else "—" for a in arts)])
    rows.append(["score threshold", *(f"{a.score_thresh:g}" if a else "—" for a in arts)])
    rows.append(["file", *((a.name if a else "—") for a in arts)])
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------------
# training the tiny pair from the UI
# ---------------------------------------------------------------------------------------------------------
class QuickstartJob:
    """`training.quickstart.quickstart` in a background thread (one at a time), with a polled status line.

    quickstart reports its stages as "[quickstart] ..." lines on stderr; a tee on sys.stderr (still writing
    everything through) turns them into the status line while it runs.
    """

    STAGES = 5

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.started = 0.0
        self.message = ""
        self.fraction: float | None = None
        self.error: str | None = None
        self.done = False
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, out_dir: Path, **options: Any) -> bool:
        with self._lock:
            if self.running:
                return False
            self.started, self.message, self.fraction, self.error, self.done = time.time(), "starting", 0.0, None, False
            self.thread = threading.Thread(target=self._run, args=(Path(out_dir), options),
                                           name="sfdeploy-quickstart", daemon=True)
            self.thread.start()
            return True

    def note(self, line: str) -> None:
        line = line.strip()
        if not line.startswith("[quickstart]"):
            return
        self.message = line[len("[quickstart]"):].strip()[:160]
        if "stage " in self.message:
            try:
                k = int(self.message.split("stage ", 1)[1].split("/", 1)[0])
                self.fraction = min(0.99, (k - 1) / self.STAGES)
            except ValueError:
                pass

    def _run(self, out_dir: Path, options: dict[str, Any]) -> None:
        import inspect

        tee = _StderrTee(sys.stderr, self.note)
        sys.stderr = tee
        try:
            try:
                from training.quickstart import quickstart
            except ImportError:
                import training

                quickstart = training.quickstart
            params = inspect.signature(quickstart).parameters
            kwargs = {k: v for k, v in options.items() if k in params and v is not None}
            if "progress" in params:
                kwargs["progress"] = False  # no tqdm bars in the server log
            quickstart(out_dir, **kwargs)
            self.message, self.fraction = "done", 1.0
        except BaseException as exc:  # noqa: BLE001 - reported in the UI (SystemExit included)
            log.warning("quickstart failed: %s", traceback.format_exc())
            self.error = _one_line(exc)
        finally:
            if sys.stderr is tee:
                sys.stderr = tee.stream
            self.done = True

    def status(self) -> str:
        elapsed = time.time() - self.started
        if self.error:
            return f"⚠️ Training failed after {elapsed:.0f} s: {self.error}"
        if self.done:
            return f"✅ Trained in {elapsed:.0f} s."
        pct = f" {self.fraction:.0%}" if self.fraction else ""
        return f"⏳ Training the tiny pair{pct} ({elapsed:.0f} s): {self.message}"


class _StderrTee:
    """sys.stderr stand-in: writes through, and hands complete lines to `on_line`."""

    def __init__(self, stream: Any, on_line: Callable[[str], None]) -> None:
        self.stream, self.on_line, self._buf = stream, on_line, ""

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            try:
                self.on_line(line)
            except Exception:  # noqa: BLE001
                pass
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


# ---------------------------------------------------------------------------------------------------------
# the UI
# ---------------------------------------------------------------------------------------------------------
def resolve_models_dir(models_dir: str | Path | None) -> Path:
    return Path(models_dir or os.environ.get(ENV_MODELS) or DEFAULT_MODELS_DIR).expanduser()


def example_images() -> list[str]:
    try:
        from importlib.resources import files

        folder = Path(str(files("sfdeploy") / "assets"))
    except Exception:  # noqa: BLE001
        folder = Path(__file__).resolve().parent / "sfdeploy" / "assets"
    return [str(p) for p in sorted(folder.glob("*.png"))]


def raw_upload_path(payload: Any) -> str | bytes | RejectedUpload | None:
    """Preprocessing for the input gr.Image: the uploaded file's path, not decoded. gradio's own decoding would
    fail with a bare 'Error' on corrupt files; ours (load_input) gives a friendly message and applies serving's
    limits. An inline data: URL (a pasted/webcam frame, or any API client) is size-checked before its base64 is
    decoded, and decoded in memory: no temp file to leak. (An instance attribute rather than a gr.Image subclass:
    gradio writes a .pyi stub next to the file of every Component subclass.)"""
    if payload is None:
        return None
    url = getattr(payload, "url", None) or ""
    if url.startswith("data:"):
        head, sep, b64 = url.partition(",")
        if not sep or ";base64" not in head:
            return RejectedUpload("the inline upload is not a base64 data: URL")
        size = limits.base64_decoded_size(b64)
        if size > MAX_UPLOAD_BYTES:
            return RejectedUpload(_too_big(size))
        try:
            return base64.b64decode(b64, validate=False)
        except (binascii.Error, ValueError):
            return RejectedUpload("the inline upload is not valid base64")
    return str(payload.path) if getattr(payload, "path", None) else ""


def build_app(models_dir: str | Path | None = None, *, store: ModelStore | None = None,
              allow_train: bool = False) -> Any:
    """The gradio Blocks of the demo (not launched). `models_dir` None: $SFDEPLOY_MODELS or runs/quickstart.

    Only what the page shows can be called: the detect button is the one documented API endpoint, the other
    events are left out of the API docs, and the training event exists only with `allow_train` (it writes
    models into `models_dir`; gradio runs any registered event for any client, hidden button or not)."""
    import gradio as gr

    root = resolve_models_dir(models_dir)
    store = store or ModelStore()
    ctx: dict[str, Any] = {"catalog": discover(root, store)}
    job = QuickstartJob()
    examples = example_images()

    def catalog() -> Catalog:
        return ctx["catalog"]

    def family_of(key: str | None) -> Family | None:
        fams = catalog().families
        return fams.get(key) if key else None

    def first_family() -> Family | None:
        fams = catalog().families
        return next(iter(fams.values()), None)

    def family_updates(key: str | None) -> tuple[Any, ...]:
        """backend radio, backend note, two sliders, metrics table, models markdown for a family."""
        fam = family_of(key)
        choices, note = backend_choices(fam)
        value = choices[0][1] if choices else None
        sliders = [gr.update(**slider_args(fam, role)) for role in ROLES]
        return (gr.update(choices=choices, value=value), note, *sliders, metrics_rows(fam), models_summary(fam))

    def models_summary(fam: Family | None) -> str:
        cat = catalog()
        if fam is None:
            return ""
        lines = []
        for role in ROLES:
            files = ", ".join(f"`{a.name}`" for a in fam.sides[role].values()) or "none found"
            lines.append(f"{ROLE_LABELS[role]}: {files}")
        if cat.skipped:
            lines.append("Skipped: " + "; ".join(cat.skipped[:5]) + (" …" if len(cat.skipped) > 5 else ""))
        return "  \n".join(lines)

    def setup_text() -> str:
        cat = catalog()
        where = f"`{root}`" + ("" if root.is_dir() else " (does not exist yet)")
        hint = TRAIN_ENABLED_HINT if allow_train else TRAIN_DISABLED_HINT
        text = f"### No models found in {where}\n\n" + QUICKSTART_HINT.format(dir=root, train=hint)
        if cat.skipped:
            text += "\n\nFiles that could not be loaded: " + "; ".join(cat.skipped[:5])
        return text

    # -- event handlers ---------------------------------------------------------------------------
    def on_run(path: str | None, key: str | None, backend: str | None, thr_b: float, thr_s: float):  # noqa: ANN202
        if path is None:
            return (None, *render(None, thr_b, thr_s), "")
        fam = family_of(key)
        if fam is None or not backend:
            return (None, *render(None, thr_b, thr_s), "Pick a detector family first.")
        try:
            image, note = load_input(path)
        except BadImage as exc:
            message = f"Could not use this image: {exc}. Try a PNG/JPEG/WebP photo under {MAX_PIXELS // 10**6} MP."
            gr.Warning(message)
            return (None, *render(None, thr_b, thr_s), f"⚠️ {message}")
        raw = run_pair(store, fam, backend, image)
        errors = [p["error"] for p in raw["panels"].values() if p["error"]]
        h, w = image.shape[:2]
        status = f"{fam.label} · {BACKEND_LABELS[backend]} · image {w}x{h}" + (f" ({note})" if note else "")
        if errors:
            status += "  \n⚠️ " + "  \n⚠️ ".join(errors)
        return (raw, *render(raw, thr_b, thr_s), status)

    def on_rerender(raw: dict[str, Any] | None, thr_b: float, thr_s: float):  # noqa: ANN202
        return render(raw, thr_b, thr_s)

    def on_reset(key: str | None):  # noqa: ANN202
        fam = family_of(key)
        return tuple((fam.representative(r).score_thresh if fam and fam.representative(r) else 0.0) for r in ROLES)

    def on_rescan(key: str | None):  # noqa: ANN202
        store.clear()
        ctx["catalog"] = discover(root, store)
        return main_updates(key)

    def main_updates(key: str | None) -> tuple[Any, ...]:
        cat = catalog()
        fam_key = key if key in cat.families else (next(iter(cat.families), None))
        choices = [(f.label, d) for d, f in cat.families.items()]
        return (gr.update(visible=not cat), setup_text(), gr.update(visible=bool(cat)),
                gr.update(choices=choices, value=fam_key), *family_updates(fam_key))

    def on_train(detector: str, fast: bool, progress: gr.Progress = gr.Progress()):  # noqa: ANN202, B008
        root.mkdir(parents=True, exist_ok=True)
        job.start(root, model=detector, fast=bool(fast))  # a second click just follows the running job
        while job.running:
            progress(job.fraction or 0.0, desc=job.status())
            yield job.status()
            time.sleep(1.0)
        yield job.status()

    def slider_args(fam: Family | None, role: str) -> dict[str, Any]:
        art = fam.representative(role) if fam else None
        floor = art.score_thresh if art else 0.0
        return dict(minimum=floor, maximum=1.0, value=floor, interactive=art is not None,
                    label=f"{ROLE_LABELS[role]} score threshold (model default {floor:g})")

    # -- layout -----------------------------------------------------------------------------------
    cat = catalog()
    fam0 = first_family()
    with gr.Blocks(title="sfdeploy: baseline vs Sampling-Free", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(
            "# Baseline vs Sampling-Free detectors\n"
            "The same detector trained two ways: the **baseline** (focal loss / biased sampling) and **Sampling-"
            "Free** (no sampling heuristics: optimal bias init, guided loss scaling, class-adaptive threshold). "
            f"Models from `{root}`.")
        raw_state = gr.State(None)

        with gr.Column(visible=not cat) as setup_col:
            setup_md = gr.Markdown(setup_text())
            if allow_train:
                with gr.Row():
                    train_model = gr.Dropdown(choices=[(v, k) for k, v in FAMILY_LABELS.items()],
                                              value="retinanet", label="Detector to train", scale=1)
                    train_fast = gr.Checkbox(False, label="Smoke-test budget (about a minute; the models will "
                                                          "barely detect anything)", scale=2)
            with gr.Row():
                if allow_train:
                    train_btn = gr.Button("Train the tiny built-in pair here", variant="primary")
                rescan_btn0 = gr.Button("Rescan models folder")
            train_md = gr.Markdown("")

        with gr.Column(visible=bool(cat)) as main_col:
            with gr.Row():
                family_dd = gr.Dropdown(choices=[(f.label, d) for d, f in cat.families.items()],
                                        value=fam0.detector if fam0 else None, label="Detector family",
                                        interactive=True, elem_id="family")
                ch, note0 = backend_choices(fam0)
                backend_radio = gr.Radio(choices=ch, value=ch[0][1] if ch else None, label="Backend",
                                         elem_id="backend")
                with gr.Column():
                    backend_md = gr.Markdown(note0)
                    rescan_btn = gr.Button("Rescan models folder", size="sm")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=260):
                    image_in = gr.Image(type="filepath", image_mode=None, label="Input image",
                                        sources=["upload", "webcam", "clipboard"], elem_id="input-image")
                    image_in.preprocess = raw_upload_path
                    run_btn = gr.Button("Detect", variant="primary", elem_id="run")
                    if examples:
                        gr.Examples(examples=[[p] for p in examples], inputs=[image_in], label="Bundled examples")
                with gr.Column(scale=1, min_width=260):
                    out_b = gr.Image(label="Baseline", type="numpy", format="png", interactive=False,
                                     elem_id="panel-baseline")
                    cap_b = gr.Markdown("**Baseline** — upload an image", elem_id="caption-baseline")
                    slider_b = gr.Slider(step=1e-4, **slider_args(fam0, "baseline"),
                                         elem_id="thresh-baseline")
                with gr.Column(scale=1, min_width=260):
                    out_s = gr.Image(label="Sampling-Free", type="numpy", format="png", interactive=False,
                                     elem_id="panel-sampling-free")
                    cap_s = gr.Markdown("**Sampling-Free** — upload an image", elem_id="caption-sampling-free")
                    slider_s = gr.Slider(step=1e-4, **slider_args(fam0, "sampling_free"),
                                         elem_id="thresh-sampling-free")
            with gr.Row():
                gr.Markdown(THRESHOLD_HELP)
                reset_btn = gr.Button("Reset thresholds to the models' defaults", size="sm", scale=0)
            status_md = gr.Markdown("", elem_id="status")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    if hasattr(gr, "ImageSlider"):
                        compare = gr.ImageSlider(label="Compare: baseline ⟷ Sampling-Free", type="numpy",
                                                 format="png", elem_id="compare")
                    else:  # older gradio: a gallery of the two renders
                        compare = gr.Gallery(label="Compare: baseline | Sampling-Free", columns=2, format="png",
                                             elem_id="compare")
                with gr.Column(scale=1):
                    gr.Markdown("### Evaluation metrics (from the models' metadata)")
                    metrics_df = gr.Dataframe(headers=["", "Baseline", "Sampling-Free"], value=metrics_rows(fam0),
                                              interactive=False, wrap=True, elem_id="metrics")
                    models_md = gr.Markdown(models_summary(fam0))

        # -- wiring -------------------------------------------------------------------------------
        family_outputs = [backend_radio, backend_md, slider_b, slider_s, metrics_df, models_md]
        run_inputs = [image_in, family_dd, backend_radio, slider_b, slider_s]
        run_outputs = [raw_state, out_b, cap_b, out_s, cap_s, compare, status_md]
        render_outputs = [out_b, cap_b, out_s, cap_s, compare]
        main_outputs = [setup_col, setup_md, main_col, family_dd, *family_outputs]

        # Each page load shows the current catalog (it changes after Rescan or training from the page).
        # "private": left out of the API docs. gradio still runs any registered event for a client that calls it
        # the way the page does, so no event may do more than the page's visible controls (hence no on_train).
        private = dict(api_visibility="private")
        demo.load(main_updates, [family_dd], main_outputs, queue=False, **private)
        family_dd.input(family_updates, [family_dd], family_outputs, **private).then(
            on_run, run_inputs, run_outputs, **private)
        backend_radio.input(on_run, run_inputs, run_outputs, **private)
        image_in.change(on_run, run_inputs, run_outputs, **private)
        run_btn.click(on_run, run_inputs, run_outputs, api_name="detect")
        for slider in (slider_b, slider_s):
            slider.change(on_rerender, [raw_state, slider_b, slider_s], render_outputs, queue=False,
                          show_progress="hidden", **private)
        reset_btn.click(on_reset, [family_dd], [slider_b, slider_s], **private)
        rescan_btn.click(on_rescan, [family_dd], main_outputs, **private)
        rescan_btn0.click(on_rescan, [family_dd], main_outputs, **private)
        if allow_train:  # not registered at all otherwise: nothing to call
            train_btn.click(on_train, [train_model, train_fast], [train_md], **private).then(
                on_rescan, [family_dd], main_outputs, **private)
    demo.sfdeploy_catalog = ctx  # for tests and tooling
    demo.sfdeploy_store = store
    return demo


def _truthy(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="app.py", description="Gradio demo: baseline vs Sampling-Free detectors.")
    p.add_argument("--models", default=None,
                   help=f"folder of checkpoints/exports (default: ${ENV_MODELS}, else {DEFAULT_MODELS_DIR})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--share", type=_truthy, nargs="?", const=True, default=False,
                   help="create a public gradio.live link (default false)")
    p.add_argument("--allow-train", action="store_true",
                   help="let visitors train the tiny built-in pair from the page (writes into --models; off by "
                        "default: anyone who can reach the page could start it)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machines: no phoning home
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("sfdeploy demo: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    root = resolve_models_dir(args.models)
    print(f"sfdeploy demo: loading models from {root} ...", file=sys.stderr)
    demo = build_app(root, allow_train=args.allow_train)
    if args.allow_train:
        print(f"sfdeploy demo: training from the page is ON (it writes into {root})", file=sys.stderr)
    cat = demo.sfdeploy_catalog["catalog"]
    fams = ", ".join(f.label for f in cat.families.values()) or "none (the page explains how to get them)"
    print(f"sfdeploy demo: families: {fams}", file=sys.stderr)
    port = args.port if args.port is not None else int(os.environ.get("GRADIO_SERVER_PORT", 7860))
    launch(demo, host=args.host, port=port, share=args.share)
    return 0


def launch(demo: Any, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           block: bool = True, quiet: bool = False) -> Any:
    """Queue (one inference at a time: the CPU is the bottleneck) and start the server."""
    assets = [str(Path(p).parent) for p in example_images()[:1]]
    demo.queue(default_concurrency_limit=1)
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD_BYTES,
                       allowed_paths=assets, show_error=False, prevent_thread_lock=not block, quiet=quiet,
                       app_kwargs={"exception_handlers": _unknown_endpoint_handlers()})


def _unknown_endpoint_handlers() -> dict[Any, Callable[..., Any]]:
    """gradio answers a call to an endpoint that does not exist (e.g. /gradio_api/call/on_train without
    --allow-train) with a 500 and a traceback in the log; make it a one-line 404."""
    from gradio import route_utils

    missing = getattr(route_utils, "FnIndexInferError", None)
    if missing is None:
        return {}

    async def not_found(request: Any, exc: Exception) -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": f"no such endpoint: {_one_line(exc)}"}, status_code=404)

    return {missing: not_found}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
