"""The demo page: gradio Blocks wiring the catalogue, inference of a pair, rendering and the quickstart job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .catalog import Catalog, Family, backend_choices, discover, resolve_models_dir
from .common import BACKEND_LABELS, FAMILY_LABELS, ROLE_LABELS, ROLES
from .inference import run_pair
from .inputs import MAX_PIXELS, BadImage, example_images, load_input, raw_upload_path
from .job import QuickstartJob
from .render import metrics_rows, render
from .store import ModelStore

# gradio keeps every upload and every rendered panel in its cache: every 5 minutes, files older than 15 are deleted
# (and the whole cache when the server stops).
DELETE_CACHE = (300, 900)

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
                out_b, cap_b, slider_b = _result_panel(gr, "Baseline", "baseline", slider_args(fam0, "baseline"))
                out_s, cap_s, slider_s = _result_panel(gr, "Sampling-Free", "sampling-free",
                                                       slider_args(fam0, "sampling_free"))
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


def _result_panel(gr: Any, label: str, slug: str, slider: dict[str, Any]) -> tuple[Any, Any, Any]:
    """One method's column: rendered detections, a caption and its own score-threshold slider."""
    with gr.Column(scale=1, min_width=260):
        image = gr.Image(label=label, type="numpy", format="png", interactive=False, elem_id=f"panel-{slug}")
        caption = gr.Markdown(f"**{label}** — upload an image", elem_id=f"caption-{slug}")
        threshold = gr.Slider(step=1e-4, **slider, elem_id=f"thresh-{slug}")
    return image, caption, threshold
