"""The quickstart as a background job of the demo page: one at a time, progress from the pipeline's stage
callback, a status line the UI polls."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path

from .common import one_line

log = logging.getLogger("sfdeploy.demo")


class QuickstartJob:
    """`sfdeploy.app.quickstart.quickstart` in a background thread (one at a time), with a polled status line."""

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

    def start(self, out_dir: Path, model: str = "retinanet", fast: bool = False) -> bool:
        """Start training the pair into `out_dir`; False (and nothing started) while a job runs."""
        with self._lock:
            if self.running:
                return False
            self.started, self.message, self.fraction, self.error, self.done = time.time(), "starting", 0.0, None, False
            self.thread = threading.Thread(target=self._run, args=(Path(out_dir), model, fast),
                                           name="sfdeploy-quickstart", daemon=True)
            self.thread.start()
            return True

    def on_stage(self, k: int, total: int, text: str) -> None:
        """The pipeline's stage callback: stage k of total is starting."""
        self.message = f"stage {k}/{total}: {text}"[:160]
        self.fraction = min(0.99, (k - 1) / total)

    def _run(self, out_dir: Path, model: str, fast: bool) -> None:
        from . import quickstart as pipeline  # looked up at run time: tests replace pipeline.quickstart

        try:
            pipeline.quickstart(out_dir, model=model, fast=fast, progress=False, on_stage=self.on_stage)
            self.message, self.fraction = "done", 1.0
        except BaseException as exc:  # noqa: BLE001 - reported in the UI (SystemExit included)
            log.warning("quickstart failed: %s", traceback.format_exc())
            self.error = one_line(exc)
        finally:
            self.done = True

    def status(self) -> str:
        elapsed = time.time() - self.started
        if self.error:
            return f"⚠️ Training failed after {elapsed:.0f} s: {self.error}"
        if self.done:
            return f"✅ Trained in {elapsed:.0f} s."
        pct = f" {self.fraction:.0%}" if self.fraction else ""
        return f"⏳ Training the tiny pair{pct} ({elapsed:.0f} s): {self.message}"
