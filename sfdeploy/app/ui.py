"""The demo page: gradio Blocks laid out and wired to the handlers of `events` (catalogue, inference of a pair,
rendering, the quickstart job)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .catalog import backend_choices, resolve_models_dir
from .common import FAMILY_LABELS
from .inputs import example_images, raw_upload_path
from .render import metrics_rows
from .store import ModelStore

# gradio keeps every upload and every rendered panel in its cache: every 5 minutes, files older than 15 are deleted
# (and the whole cache when the server stops).
DELETE_CACHE = (300, 900)

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

    from .events import DemoEvents

    ev = DemoEvents(resolve_models_dir(models_dir), store or ModelStore(), allow_train)
    with gr.Blocks(title="sfdeploy: baseline vs Sampling-Free", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(
            "# Baseline vs Sampling-Free detectors\n"
            "The same detector trained two ways: the **baseline** (focal loss / biased sampling) and **Sampling-"
            "Free** (no sampling heuristics: optimal bias init, guided loss scaling, class-adaptive threshold). "
            f"Models from `{ev.root}`.")
        ui = SimpleNamespace(raw_state=gr.State(None))
        _setup_column(gr, ev, ui)
        _main_column(gr, ev, ui)
        _wire(demo, ev, ui)
    demo.sfdeploy_catalog = ev.ctx  # for tests and tooling
    demo.sfdeploy_store = ev.store
    return demo


def _setup_column(gr: Any, ev: Any, ui: SimpleNamespace) -> None:
    """Shown while the models folder holds no pair: how to get one (and, with allow_train, a button to train it)."""
    with gr.Column(visible=not ev.catalog()) as ui.setup_col:
        ui.setup_md = gr.Markdown(ev.setup_text())
        if ev.allow_train:
            with gr.Row():
                ui.train_model = gr.Dropdown(choices=[(v, k) for k, v in FAMILY_LABELS.items()],
                                             value="retinanet", label="Detector to train", scale=1)
                ui.train_fast = gr.Checkbox(False, label="Smoke-test budget (about a minute; the models will "
                                                         "barely detect anything)", scale=2)
        with gr.Row():
            if ev.allow_train:
                ui.train_btn = gr.Button("Train the tiny built-in pair here", variant="primary")
            ui.rescan_btn0 = gr.Button("Rescan models folder")
        ui.train_md = gr.Markdown("")


def _main_column(gr: Any, ev: Any, ui: SimpleNamespace) -> None:
    """The comparison: family and backend pickers, input, the two result panels, comparison slider, metrics."""
    cat = ev.catalog()
    fam0 = ev.first_family()
    with gr.Column(visible=bool(cat)) as ui.main_col:
        with gr.Row():
            ui.family_dd = gr.Dropdown(choices=[(f.label, d) for d, f in cat.families.items()],
                                       value=fam0.detector if fam0 else None, label="Detector family",
                                       interactive=True, elem_id="family")
            ch, note0 = backend_choices(fam0)
            ui.backend_radio = gr.Radio(choices=ch, value=ch[0][1] if ch else None, label="Backend",
                                        elem_id="backend")
            with gr.Column():
                ui.backend_md = gr.Markdown(note0)
                ui.rescan_btn = gr.Button("Rescan models folder", size="sm")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                ui.image_in = gr.Image(type="filepath", image_mode=None, label="Input image",
                                       sources=["upload", "webcam", "clipboard"], elem_id="input-image")
                ui.image_in.preprocess = raw_upload_path
                ui.run_btn = gr.Button("Detect", variant="primary", elem_id="run")
                examples = example_images()
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[ui.image_in], label="Bundled examples")
            ui.out_b, ui.cap_b, ui.slider_b = _result_panel(gr, "Baseline", "baseline",
                                                            ev.slider_args(fam0, "baseline"))
            ui.out_s, ui.cap_s, ui.slider_s = _result_panel(gr, "Sampling-Free", "sampling-free",
                                                            ev.slider_args(fam0, "sampling_free"))
        with gr.Row():
            gr.Markdown(THRESHOLD_HELP)
            ui.reset_btn = gr.Button("Reset thresholds to the models' defaults", size="sm", scale=0)
        ui.status_md = gr.Markdown("", elem_id="status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                if hasattr(gr, "ImageSlider"):
                    ui.compare = gr.ImageSlider(label="Compare: baseline ⟷ Sampling-Free", type="numpy",
                                                format="png", elem_id="compare")
                else:  # older gradio: a gallery of the two renders
                    ui.compare = gr.Gallery(label="Compare: baseline | Sampling-Free", columns=2, format="png",
                                            elem_id="compare")
            with gr.Column(scale=1):
                gr.Markdown("### Evaluation metrics (from the models' metadata)")
                ui.metrics_df = gr.Dataframe(headers=["", "Baseline", "Sampling-Free"], value=metrics_rows(fam0),
                                             interactive=False, wrap=True, elem_id="metrics")
                ui.models_md = gr.Markdown(ev.models_summary(fam0))


def _wire(demo: Any, ev: Any, ui: SimpleNamespace) -> None:
    """Events: only the detect button is a documented API endpoint; training is registered only with allow_train."""
    family_outputs = [ui.backend_radio, ui.backend_md, ui.slider_b, ui.slider_s, ui.metrics_df, ui.models_md]
    run_inputs = [ui.image_in, ui.family_dd, ui.backend_radio, ui.slider_b, ui.slider_s]
    run_outputs = [ui.raw_state, ui.out_b, ui.cap_b, ui.out_s, ui.cap_s, ui.compare, ui.status_md]
    render_outputs = [ui.out_b, ui.cap_b, ui.out_s, ui.cap_s, ui.compare]
    main_outputs = [ui.setup_col, ui.setup_md, ui.main_col, ui.family_dd, *family_outputs]

    # Each page load shows the current catalog (it changes after Rescan or training from the page).
    # "private": left out of the API docs. gradio still runs any registered event for a client that calls it
    # the way the page does, so no event may do more than the page's visible controls (hence no on_train).
    private = dict(api_visibility="private")
    demo.load(ev.main_updates, [ui.family_dd], main_outputs, queue=False, **private)
    ui.family_dd.input(ev.family_updates, [ui.family_dd], family_outputs, **private).then(
        ev.on_run, run_inputs, run_outputs, **private)
    ui.backend_radio.input(ev.on_run, run_inputs, run_outputs, **private)
    ui.image_in.change(ev.on_run, run_inputs, run_outputs, **private)
    ui.run_btn.click(ev.on_run, run_inputs, run_outputs, api_name="detect")
    for slider in (ui.slider_b, ui.slider_s):
        slider.change(ev.on_rerender, [ui.raw_state, ui.slider_b, ui.slider_s], render_outputs, queue=False,
                      show_progress="hidden", **private)
    ui.reset_btn.click(ev.on_reset, [ui.family_dd], [ui.slider_b, ui.slider_s], **private)
    ui.rescan_btn.click(ev.on_rescan, [ui.family_dd], main_outputs, **private)
    ui.rescan_btn0.click(ev.on_rescan, [ui.family_dd], main_outputs, **private)
    if ev.allow_train:  # not registered at all otherwise: nothing to call
        ui.train_btn.click(ev.train_handler(), [ui.train_model, ui.train_fast], [ui.train_md], **private).then(
            ev.on_rescan, [ui.family_dd], main_outputs, **private)


def _result_panel(gr: Any, label: str, slug: str, slider: dict[str, Any]) -> tuple[Any, Any, Any]:
    """One method's column: rendered detections, a caption and its own score-threshold slider."""
    with gr.Column(scale=1, min_width=260):
        image = gr.Image(label=label, type="numpy", format="png", interactive=False, elem_id=f"panel-{slug}")
        caption = gr.Markdown(f"**{label}** — upload an image", elem_id=f"caption-{slug}")
        threshold = gr.Slider(step=1e-4, **slider, elem_id=f"thresh-{slug}")
    return image, caption, threshold
