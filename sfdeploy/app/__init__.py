"""The top floor: orchestration (the quickstart pipeline) and the gradio demo, by concern.

    common     labels, roles, one-line error text
    store      loaded predictors (serving.load behind an LRU cache)
    catalog    model discovery and baseline / Sampling-Free pairing per detector family
    inputs     uploads checked against sfdeploy.limits, decoded, downscaled
    inference  both models of a pair run once on an image
    render     panels, captions and the metrics table drawn from that (no inference)
    job        the quickstart as a background job of the page
    ui         the gradio Blocks
    launch     flags and the server (`python app.py`, `sfdeploy demo`)
    quickstart the pipeline behind `sfdeploy quickstart` (train, evaluate, export, predict, summarise)

Like `sfdeploy.cli` this layer may import every stage; nothing in the core or the stages imports it. Importing it
is light: gradio, torch and the stage packages' heavy parts load only when a page is built or a job runs.
"""

from __future__ import annotations

from .catalog import (Artifact, Catalog, Family, backend_choices, backend_support, describe, discover,
                      find_model_files, pair_artifacts, resolve_models_dir, training_meta)
from .common import BACKEND_LABELS, FAMILY_LABELS, ROLE_LABELS, ROLES
from .inference import count_above, run_pair
from .inputs import MAX_PIXELS, MAX_UPLOAD_BYTES, BadImage, RejectedUpload, example_images, load_input, raw_upload_path
from .job import QuickstartJob
from .launch import launch, main, parse_args
from .render import metrics_rows, render, render_panel
from .store import ModelStore, default_loader
from .ui import build_app

__all__ = [
    "BACKEND_LABELS", "FAMILY_LABELS", "MAX_PIXELS", "MAX_UPLOAD_BYTES", "ROLES", "ROLE_LABELS", "Artifact",
    "BadImage", "Catalog", "Family", "ModelStore", "QuickstartJob", "RejectedUpload", "backend_choices",
    "backend_support", "build_app", "count_above", "default_loader", "describe", "discover", "example_images",
    "find_model_files", "launch", "load_input", "main", "metrics_rows", "pair_artifacts", "parse_args",
    "raw_upload_path", "render", "render_panel", "resolve_models_dir", "run_pair", "training_meta",
]
