"""benchmarks/cpu_suite.sh names every variant it trains, and those names exist: a suite step fails only hours in, and
the default Sampling-Free form has changed once already (a one-stage `sampling_free` run silently changed meaning)."""

from __future__ import annotations

import runpy
import shlex
from pathlib import Path

from sfdeploy.config import ONE_STAGE

ROOT = Path(__file__).resolve().parents[2]


def _values(tokens: list[str], flag: str) -> list[str] | None:
    if flag not in tokens:
        return None
    rest = tokens[tokens.index(flag) + 1:]
    return rest[:next((i for i, t in enumerate(rest) if t.startswith("-")), len(rest))]


def _accuracy_runs() -> list[list[str]]:
    text = (ROOT / "benchmarks" / "cpu_suite.sh").read_text().replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in text.splitlines() if line.startswith('"${A[@]}"')]


def test_every_suite_step_names_existing_variants_and_the_sampling_free_form() -> None:
    variants = runpy.run_path(str(ROOT / "benchmarks" / "accuracy.py"))["VARIANTS"]
    runs = _accuracy_runs()
    assert len(runs) >= 8
    for tokens in runs:
        named, detectors = _values(tokens, "--variants"), _values(tokens, "--detectors")
        assert named and detectors, f"state --variants and --detectors explicitly: {' '.join(tokens)}"
        assert set(named) <= set(variants), set(named) - set(variants)
        if set(detectors) & set(ONE_STAGE):  # one-stage heads: the form, not the moving default
            assert "sampling_free" not in named, tokens


def test_accuracy_eval_every_rejects_non_positive_steps() -> None:
    """`--eval-every 0` is a one-line exit-2 usage error, not a traceback from TrainConfig hours into a suite."""
    import subprocess
    import sys

    for bad in ("0", "-5", "x"):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--out", "/tmp/x",
                               "--eval-every", bad], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "--eval-every" in proc.stderr and "Traceback" not in proc.stderr
