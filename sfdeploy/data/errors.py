"""Errors and load-time problem reporting shared by every reader."""

from __future__ import annotations

import logging
import warnings
from collections import Counter

logger = logging.getLogger("sfdeploy.data")


class DataError(ValueError):
    """Input data is unusable; the one-line message names the file and what to do about it."""


class DataWarning(UserWarning):
    """Input data had fixable problems (clipped/dropped boxes, missing files); counts are in the message."""


class ProblemLog:
    """Counts problems of each kind while a data set loads, then reports ONE summary line.

    Per-box warnings would flood the console on large data sets; a count per kind (with one example)
    tells the user what happened and where to look.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, kind: str, n: int = 1, example: object | None = None) -> None:
        """Record ``n`` problems of ``kind``, a template with ``{n}`` (e.g. "dropped {n} zero-area boxes")."""
        if n <= 0:
            return
        self.counts[kind] += n
        if example is not None and kind not in self.examples:
            self.examples[kind] = str(example)

    def summary(self) -> str:
        parts = []
        for kind, n in self.counts.items():
            text = kind.format(n=n)
            if kind in self.examples:
                text += f" (e.g. {self.examples[kind]})"
            parts.append(text)
        return f"{self.source}: " + "; ".join(parts) if parts else ""

    def report(self) -> None:
        """Emit the summary as a DataWarning if anything was recorded (and a log record where logging is set up).

        One channel only: with no logging configured, a log record would reach stderr through logging's
        last-resort handler next to the warning, and the same data set opened again (train, priors, validation)
        would repeat it; Python's warning registry shows each message once per call site.
        """
        if self.counts:
            message = self.summary()
            if logger.hasHandlers():
                logger.warning(message)
            warnings.warn(message, DataWarning, stacklevel=3)
