"""Loaded predictors for the demo: `serving.load` behind a small LRU cache (one load per file and backend)."""

from __future__ import annotations

import collections
import logging
import threading
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("sfdeploy.demo")

PREDICTOR_CACHE = 4


def default_loader(path: str | Path, backend: str) -> Any:
    """serving.load with the device each backend needs (TensorRT runs on the GPU, the rest on the CPU)."""
    from sfdeploy import serving
    device = {"torch": "cpu", "onnxruntime": None, "tensorrt": "cuda"}.get(backend)  # ORT: best provider
    return serving.load(str(path), backend=backend, device=device)


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


