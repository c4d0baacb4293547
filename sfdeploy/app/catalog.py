"""Model discovery and pairing: which files under the models folder form a baseline / Sampling-Free pair per
detector family, read from the metadata that `serving.load` exposes (the demo has no model code of its own)."""

from __future__ import annotations

import collections
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sfdeploy.serving import SUFFIX_BACKEND

from .common import BACKEND_LABELS, DEFAULT_MODELS_DIR, ENV_MODELS, FAMILY_LABELS, FAMILY_ORDER, ROLE_LABELS, ROLES, as_dict, one_line
from .store import ModelStore

log = logging.getLogger("sfdeploy.demo")

# The left panel shows the paper's baseline (focal loss / biased sampling); "ce" (plain cross-entropy, an
# ablation) stands in only when a family has no baseline run.
ROLE_METHODS = {"baseline": ("baseline", "ce"), "sampling_free": ("sampling_free",)}
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".cache", "wandb", "tensorboard"}
MAX_SCAN_DEPTH = 6


def backend_support() -> dict[str, str | None]:
    """backend -> None when it can run here, else the reason it cannot."""
    out: dict[str, str | None] = {"torch": None}
    out["onnxruntime"] = None if importlib.util.find_spec("onnxruntime") else (
        "onnxruntime is not installed (pip install onnxruntime)")
    if not importlib.util.find_spec("tensorrt"):
        out["tensorrt"] = "TensorRT is not installed (pip install 'sfdeploy[tensorrt]'; needs an NVIDIA GPU)"
    else:
        out["tensorrt"] = None
    return out


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


def training_meta(metadata: Any) -> dict[str, Any]:
    """The checkpoint `meta` inside a predictor's metadata (serving's parsed form, raw ONNX props, or meta)."""
    md = as_dict(metadata)
    for key in ("meta", "sfdeploy.meta"):
        if key in md:
            return as_dict(md[key])
    return md if "metrics" in md else {}


def describe(path: Path, store: ModelStore, root: Path | None = None) -> Artifact:
    """Load `path` through serving (cached) and read what the demo needs from the predictor."""
    backend = SUFFIX_BACKEND[path.suffix]
    predictor = store.get(path, backend)
    cfg = predictor.config
    meta = training_meta(getattr(predictor, "metadata", {}))
    metrics = getattr(predictor, "metrics", None)
    if not isinstance(metrics, dict) or not metrics:
        metrics = as_dict(meta.get("metrics"))
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
            reason = one_line(exc).replace(str(path), path.name)
            catalog.skipped.append(f"{_rel(path, root)}: {reason[:140]}{'…' if len(reason) > 140 else ''}")
            log.info("skipping %s: %s", path, one_line(exc))
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




def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def resolve_models_dir(models_dir: str | Path | None) -> Path:
    """--models, else $SFDEPLOY_MODELS, else runs/quickstart."""
    return Path(models_dir or os.environ.get(ENV_MODELS) or DEFAULT_MODELS_DIR).expanduser()
