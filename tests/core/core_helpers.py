"""Test helpers for tests/core (not fixtures)."""

from __future__ import annotations

from torch import nn


def fewer_proposals(model: nn.Module, train: int = 128, test: int = 100) -> nn.Module:
    """Speed up tiny R-CNNs on CPU: fewer RPN proposals reach the RoI head (1000 by default).

    Only used where the number of proposals is irrelevant to what the test checks.
    """
    rpn = getattr(model, "rpn", None)
    if rpn is not None:
        rpn._pre_nms_top_n = dict(training=2 * train, testing=2 * test)
        rpn._post_nms_top_n = dict(training=train, testing=test)
    return model
