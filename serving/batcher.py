"""Server-side request batching: concurrent /v1/detect requests for one model run as one inference.

Why: a model runs one inference at a time (each already uses every core), so under load requests queue behind
each other. A batched graph (`export --batch dynamic`) can run several images in one call for about the cost of
fewer separate calls. A worker thread per model takes the first waiting image, waits up to `window_ms` for more
(at most `max_batch`), runs them with `Predictor.infer_batch` and hands each request its own raw output. A batch
that fails is rerun image by image, so one image's error is only that image's. Only batched graphs use this
(`Predictor.batched`); the queue is bounded by the server (`max_queue` requests per model, then 503).
A request cancelled while it waits (client gone, timeout) is skipped, and no error in delivering one answer can
stop the worker: a dead worker would leave every later request of that model waiting forever.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_WINDOW_MS = 5.0
DEFAULT_MAX_BATCH = 8

log = logging.getLogger("sfdeploy.serving")


@dataclass
class _Item:
    tensor: np.ndarray
    future: Future = field(default_factory=Future)


class Batcher:
    """Collects prepared images of one model and runs them in batches on one worker thread."""

    def __init__(self, predictor: Any, *, window_ms: float = DEFAULT_WINDOW_MS, max_batch: int = DEFAULT_MAX_BATCH,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1 or window_ms < 0:
            raise ValueError(f"need max_batch >= 1 and window_ms >= 0, got {max_batch}, {window_ms}")
        self.predictor = predictor
        self.window_s = window_ms / 1000.0
        self.max_batch = int(max_batch)
        self.on_batch = on_batch  # (images, seconds) of each inference
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, tensor: np.ndarray) -> Future:
        """Queue one prepared [1,3,h,w] tensor; the future gets its raw output dict (or the exception)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # first use, or a worker that died
                self._thread = threading.Thread(target=self._loop, name="sfdeploy-batcher", daemon=True)
                self._thread.start()
        item = _Item(tensor)
        self._queue.put(item)
        return item.future

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items, stop = [first], False
            deadline = time.monotonic() + self.window_s
            while len(items) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
            # a future cancelled while it waited has nobody to answer: don't run it (set_result would raise)
            live = [i for i in items if i.future.set_running_or_notify_cancel()]
            if live:
                try:
                    self._run(live)
                except Exception:  # noqa: BLE001 - last resort: the worker keeps serving the queue
                    log.exception("request batcher: delivering a batch of %d failed", len(live))
                    for item in live:
                        _deliver(item, exc=RuntimeError("batch delivery failed"))
            if stop:
                return

    def _run(self, items: list[_Item]) -> None:
        t0 = time.perf_counter()
        try:
            raws = self.predictor.infer_batch([i.tensor for i in items], self.max_batch)
        except Exception as exc:  # noqa: BLE001 - find the image that fails; the others still get their answer
            if len(items) == 1:
                _deliver(items[0], exc=exc)
                return
            log.warning("a batch of %d images failed (%s); rerunning them one by one", len(items),
                        type(exc).__name__)
            for item in items:
                self._run([item])
            return
        if self.on_batch is not None:  # before the answers: a client that got its answer sees the metrics
            try:
                self.on_batch(len(items), time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - a metrics bug must not cost the clients their answers
                log.exception("request batcher: on_batch callback failed")
        for item, raw in zip(items, raws):
            _deliver(item, raw)


def _deliver(item: _Item, raw: Any = None, exc: BaseException | None = None) -> None:
    """Answer one request unless it already has its answer (then there is nobody left to tell)."""
    if item.future.done():
        return
    if exc is not None:
        item.future.set_exception(exc)
    else:
        item.future.set_result(raw)
