"""End to end: the demo on loopback, driven by headless Chromium (Playwright with the system Chromium).

Needs the Debian package `chromium` (/usr/bin/chromium) and `pip install playwright` (no `playwright install`);
skips with the reason otherwise. Screenshot: always written to the test's tmp folder; copied to docs/demo.png
only with SFDEPLOY_UPDATE_SCREENSHOT=1. SFDEPLOY_DEMO_MODELS=DIR runs it on real models (e.g. quickstart's)
instead of the tiny random-init pair.
"""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} not found: install the Debian package `chromium` for the browser test",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Python package `playwright` is not installed "
                                                             "(pip install playwright; the system Chromium is used)")
pytest.importorskip("gradio")
pytest.importorskip("sfdeploy.serving")

from sfdeploy.app.inputs import example_images  # noqa: E402
from sfdeploy.app.launch import launch  # noqa: E402
from sfdeploy.app.store import ModelStore, default_loader  # noqa: E402
from sfdeploy.app.ui import build_app  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path, backend):  # noqa: ANN001, ANN204
        predictor = default_loader(path, backend)
        original = predictor.predict

        def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.calls += 1
            return original(*args, **kwargs)

        predictor.predict = counted
        return predictor


@pytest.fixture(scope="module")
def server(tiny_models: Path):  # noqa: ANN201
    models = Path(os.environ.get("SFDEPLOY_DEMO_MODELS") or tiny_models / "pair")
    counter = Counter()
    demo = build_app(models, store=ModelStore(loader=counter, warmup=False))
    port = _free_port()
    launch(demo, host="127.0.0.1", port=port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", counter
    finally:
        demo.close()


def _rendered(page, elem_id: str) -> np.ndarray:  # noqa: ANN001
    from PIL import Image

    img = page.locator(f"#{elem_id} img").first
    src = img.get_attribute("src")
    assert src, f"{elem_id}: no image"
    response = page.request.get(src)
    assert response.ok, f"{elem_id}: {src} -> HTTP {response.status}"
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


def _open(page, url: str, tmp_path: Path) -> None:  # noqa: ANN001
    """Load the page; one reload if the frontend has not come up (seen once on a heavily loaded 2-core box)."""
    for attempt in range(2):
        page.goto(url, wait_until="load", timeout=60_000)
        try:
            page.wait_for_selector("#input-image input[type=file]", state="attached", timeout=40_000)
            return
        except sync_api.TimeoutError:
            page.screenshot(path=str(tmp_path / f"page-load-{attempt}.png"), full_page=True)
            if attempt:
                raise


def test_browser_upload_renders_both_panels(server, tmp_path: Path) -> None:  # noqa: ANN001
    from PIL import Image

    url, counter = server
    example = Path(example_images()[0])
    original = np.asarray(Image.open(example).convert("RGB"))
    expect = sync_api.expect
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            _open(page, url, tmp_path)

            # 1. upload -> both panels rendered, same size as the input, with something drawn on them
            page.set_input_files("#input-image input[type=file]", str(example))
            for elem in ("panel-baseline", "panel-sampling-free"):
                page.wait_for_selector(f"#{elem} img[src]", timeout=90_000)
            expect(page.locator("#caption-baseline")).to_contain_text("detection", timeout=30_000)
            expect(page.locator("#caption-sampling-free")).to_contain_text("ms", timeout=30_000)
            baseline, sampling_free = _rendered(page, "panel-baseline"), _rendered(page, "panel-sampling-free")
            for name, rendered in (("baseline", baseline), ("sampling_free", sampling_free)):
                assert rendered.shape == original.shape, name
                assert (rendered != original).any(), f"{name} panel is identical to the input"
            assert page.locator("#compare img").count() >= 1
            calls = counter.calls
            assert calls == 2  # one run: each model once

            # 2. the threshold slider re-renders without running the models
            box = page.locator("#thresh-sampling-free input[type=number]")
            box.fill("0.99")
            box.press("Enter")
            expect(page.locator("#caption-sampling-free")).to_contain_text("0 detections ≥ 0.99", timeout=30_000)
            assert counter.calls == calls
            box.fill("0.001")
            box.press("Enter")
            expect(page.locator("#caption-sampling-free")).not_to_contain_text("≥ 0.99", timeout=30_000)

            # 3. screenshot (before the bad upload's warning toast)
            page.wait_for_timeout(500)  # let the compare view settle
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("SFDEPLOY_UPDATE_SCREENSHOT") == "1":  # 256 colours: a third of the bytes
                Image.open(shot).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
                    ROOT / "docs" / "demo.png", optimize=True)

            # 4. a bad upload gives a friendly message and the app keeps working
            bad = tmp_path / "not-an-image.png"
            bad.write_bytes(b"this is not an image at all")
            page.set_input_files("#input-image input[type=file]", str(bad))
            expect(page.locator("#status")).to_contain_text("Could not use this image", timeout=60_000)
            page.set_input_files("#input-image input[type=file]", str(example))
            expect(page.locator("#caption-baseline")).to_contain_text("detection", timeout=90_000)
            expect(page.locator("#status")).not_to_contain_text("Could not use", timeout=30_000)
            page.wait_for_selector("#panel-sampling-free img[src]", timeout=60_000)
            assert counter.calls >= calls + 2
        finally:
            browser.close()
