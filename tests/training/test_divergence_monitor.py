"""The divergence monitor on its own: which step's losses stop a run, with which term and message."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from sfdeploy.training.divergence import Divergence, DivergenceMonitor


def test_non_finite_term_is_reported_first_in_name_order_and_not_kept() -> None:
    m = DivergenceMonitor(factor=10, window=5)
    d = m.check_losses({"classification": math.nan, "bbox_regression": math.inf}, step=7)
    assert d == Divergence(7, "bbox_regression", "loss term 'bbox_regression' is inf")
    assert m.early == []  # a bad step never joins the early window


def test_explosion_needs_three_early_losses_and_names_the_largest_term() -> None:
    m = DivergenceMonitor(factor=10, window=5)
    assert m.check_losses({"cls": 1.0, "box": 1.0}, 1) is None
    assert m.check_losses({"cls": 50.0, "box": 1.0}, 2) is None  # only one early loss so far: no test yet
    assert m.check_losses({"cls": 1.0, "box": 1.0}, 3) is None
    assert m.early == [2.0, 51.0, 2.0]  # median 2
    assert m.check_losses({"cls": 18.0, "box": 1.0}, 4) is None  # 19 < 10 x median 2; joins the window
    assert m.early == [2.0, 51.0, 2.0, 19.0]  # median 10.5
    d = m.check_losses({"cls": 1.0, "box": 199.0}, 5)
    assert d is not None and d.step == 5 and d.term == "box"
    assert d.message.startswith("loss exploded: 200 > 10 x early median 10.5")


def test_guide_delta_terms_are_not_part_of_the_main_loss() -> None:
    m = DivergenceMonitor(factor=2, window=3)
    for step in (1, 2, 3):
        assert m.check_losses({"cls": 1.0, "guide_delta": -100.0}, step) is None
    assert m.early == [1.0, 1.0, 1.0] and not m.filling
    assert m.check_losses({"cls": 1.5, "guide_delta": 1e6}, 4) is None  # a huge delta term is not an explosion
    assert m.check_losses({"cls": 3.0, "guide_delta": 0.0}, 5).term == "cls"


def test_window_fills_then_stops_collecting() -> None:
    m = DivergenceMonitor(factor=1e9, window=2, early=[1.0])
    assert m.filling
    m.check_losses({"a": 2.0}, 2)
    assert not m.filling
    m.check_losses({"a": 3.0}, 3)
    assert m.early == [1.0, 2.0]


def test_grad_norm_and_late_values() -> None:
    assert DivergenceMonitor.check_grad_norm(3.0, 4, loss_scaling=False) is None
    assert DivergenceMonitor.check_grad_norm(math.nan, 4, loss_scaling=True) is None  # the scaler skips the step
    assert DivergenceMonitor.check_grad_norm(math.inf, 4, loss_scaling=False) == Divergence(
        4, "grad_norm", "gradient norm is inf")
    assert DivergenceMonitor.late(6, "cls", read_at=9).message == "loss term 'cls' was not finite at step 6 (read at step 9)"
    assert DivergenceMonitor.late(6, "cls").message == "loss term 'cls' was not finite at step 6"


@given(st.lists(st.floats(0.01, 100.0), min_size=3, max_size=8), st.floats(1.5, 20.0))
def test_losses_within_the_factor_never_diverge(early: list[float], factor: float) -> None:
    m = DivergenceMonitor(factor=factor, window=len(early), early=early)
    median = sorted(early)[len(early) // 2] if len(early) % 2 else None
    bound = factor * (median if median is not None else min(early))
    assert m.check_losses({"cls": bound * 0.99}, len(early) + 1) is None
    assert m.check_losses({"cls": factor * max(early) * 1.01 + 1.0}, len(early) + 2) is not None
