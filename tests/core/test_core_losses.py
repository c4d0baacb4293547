"""Optimal bias initialisation (eq. 16-18) and guided loss scaling (eq. 19-24)."""

from __future__ import annotations

import math

import pytest
import torch

from sfdeploy.models import build_model
from sfdeploy.models.table import DETECTORS
from sfdeploy.sampling_free.losses import GuidedLossScaling, initial_ce_loss, initial_focal_loss, prior_to_bias


def test_paper_numbers() -> None:
    assert initial_focal_loss(8e4) == pytest.approx(1.19, abs=0.01)
    assert initial_ce_loss(8e4, 1e-5, 0.1) == pytest.approx(1.23, abs=0.01)
    assert prior_to_bias(1e-5) == pytest.approx(-11.51, abs=0.01)
    assert 1 / (1 + math.exp(-prior_to_bias(0.3))) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        prior_to_bias(0.0)


@pytest.mark.parametrize("detector", DETECTORS)
def test_prior_bias_per_head(tiny_cfg, detector: str) -> None:
    two_stage = detector in ("faster_rcnn", "mask_rcnn")
    head = "rpn" if two_stage else "cls"
    pi = 3e-4

    def cls_bias(model):  # the sigmoid classifier that gets the prior
        return model.rpn.head.cls_logits.bias if two_stage else model.head.classification_head.cls_logits.bias

    torch.manual_seed(0)
    sf = build_model(tiny_cfg(detector, "sampling_free", priors={head: pi}), load_backbone_weights=False)
    torch.testing.assert_close(torch.sigmoid(cls_bias(sf)), torch.full_like(cls_bias(sf), pi))
    torch.manual_seed(0)
    base = build_model(tiny_cfg(detector, "baseline"), load_backbone_weights=False)
    if two_stage:
        torch.testing.assert_close(cls_bias(base), torch.zeros_like(cls_bias(base)))  # torchvision's RPN init
        # the softmax RoI box classifier keeps torchvision's init (same seed -> same weights in both methods)
        torch.testing.assert_close(sf.roi_heads.box_predictor.cls_score.bias, base.roi_heads.box_predictor.cls_score.bias)
        assert not torch.allclose(sf.roi_heads.box_predictor.cls_score.bias,
                                  torch.full_like(sf.roi_heads.box_predictor.cls_score.bias, math.log(pi / (1 - pi))))
    else:
        torch.testing.assert_close(torch.sigmoid(cls_bias(base)), torch.full_like(cls_bias(base), 0.01))


def test_guided_scaling_value_and_gradients() -> None:
    torch.manual_seed(0)
    theta = torch.randn(5, requires_grad=True)
    x = torch.randn(5)
    guide = GuidedLossScaling(ratio=1.0)

    def losses():
        loss_cls = torch.nn.functional.softplus(theta * x).sum() * 3.0  # large, like CE over many anchors
        loss_loc = (theta**2).mean() + 0.1
        return loss_cls, loss_loc

    loss_cls, loss_loc = losses()
    scaled, delta_term = guide(loss_cls, loss_loc)
    # forward value equals the localisation loss (delta = 1)
    assert scaled.item() == pytest.approx(loss_loc.item(), rel=1e-6)
    assert delta_term.item() == pytest.approx(0.0, abs=1e-7)  # -log(1)
    g = (loss_loc / loss_cls).item()
    grad_scaled = torch.autograd.grad(scaled, theta, retain_graph=True)[0]
    loss_cls2, _ = losses()
    grad_cls = torch.autograd.grad(loss_cls2, theta)[0]
    # the ratio carries no gradient: d(g L_cls)/dtheta == g dL_cls/dtheta (L_loc's own gradient does not leak in)
    torch.testing.assert_close(grad_scaled, g * grad_cls)
    # delta = d^2 is learnable: d/dd (g d^2 L_cls - log d^2) = 2 L_loc - 2 at d = 1
    (scaled + delta_term).backward()
    assert guide.d.grad is not None
    assert guide.d.grad.item() == pytest.approx(2 * loss_loc.item() - 2, rel=1e-5)
    assert set(guide.last) == {"g", "delta", "loss_cls_raw", "loss_loc"}


def test_guided_scaling_ratio_two() -> None:
    guide = GuidedLossScaling(ratio=2.0)
    scaled, _ = guide(torch.tensor(5.0, requires_grad=True), torch.tensor(0.25))
    assert scaled.item() == pytest.approx(0.5)


def test_guided_scaling_no_positives() -> None:
    guide = GuidedLossScaling()
    theta = torch.ones(3, requires_grad=True)
    loss_cls = (theta * 2).sum()
    loss_loc = (theta * 0).sum()  # no positives: zero localisation loss that keeps the graph
    scaled, delta_term = guide(loss_cls, loss_loc)
    total = scaled + delta_term
    assert torch.isfinite(total) and total.item() == 0.0
    assert total.requires_grad
    total.backward()
    assert torch.isfinite(theta.grad).all() and torch.isfinite(guide.d.grad)
    assert guide.d.grad.item() == 0.0  # no -log(delta) push on empty batches
