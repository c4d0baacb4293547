"""build_model(cfg): a torchvision detector x backbone x training method, exactly as the config describes."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.anchor_utils import AnchorGenerator

from ..config import FOCAL_PRIOR, ModelConfig
from ..sampling_free.heads import (
    SFFCOS,
    SFFCOSHead,
    SFRetinaNet,
    SFRetinaNetHead,
    StraddleAwareRPN,
    UnsampledRoIHeads,
    UnsampledRPN,
    set_rpn_prior,
)
from .backbones import build_fpn_backbone, input_normalisation
from .table import DETECTOR_TABLE, DetectorSpec, detector_spec

# The authors' fixed priors (their later release), used when a config has no prior estimated from data.
FIXED_PRIORS = {name: spec.fixed_prior for name, spec in DETECTOR_TABLE.items()}
# torchvision's RPN objectness bias is 0 (pi = 0.5): the "baseline initialisation" of the R-CNNs.
RPN_BASELINE_PRIOR = 0.5
NUM_LEVELS = 5


def resolved_prior(cfg: ModelConfig) -> float:
    """The classifier prior the model is initialised with (the key is 'cls' or 'rpn', see cfg.prior_heads)."""
    if not cfg.uses_optimal_init:
        return RPN_BASELINE_PRIOR if cfg.is_two_stage else FOCAL_PRIOR
    return float(cfg.priors.get(cfg.prior_heads[0], FIXED_PRIORS[cfg.detector]))


def retinanet_anchor_generator(base: int) -> AnchorGenerator:
    sizes = tuple(tuple(int(base * 2**level * 2 ** (k / 3)) for k in range(3)) for level in range(NUM_LEVELS))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * NUM_LEVELS)


def rpn_anchor_generator(base: int) -> AnchorGenerator:
    return AnchorGenerator(tuple((base * 2**level,) for level in range(NUM_LEVELS)), ((0.5, 1.0, 2.0),) * NUM_LEVELS)


def fcos_anchor_generator() -> AnchorGenerator:
    # One point per location; torchvision sizes them as the strides (8..128) and derives scale ranges from them.
    return AnchorGenerator(tuple((8 * 2**level,) for level in range(NUM_LEVELS)), ((1.0,),) * NUM_LEVELS)


def build_model(cfg: ModelConfig, load_backbone_weights: bool = True) -> nn.Module:
    """Build the detector described by `cfg` (weights: random or the backbone weights named in the config).

    `load_backbone_weights=False` when a checkpoint will supply every weight (see sfdeploy.checkpoint).
    """
    backbone = build_fpn_backbone(
        cfg.backbone,
        two_stage=cfg.is_two_stage,
        fpn_channels=cfg.fpn_channels,
        weights=cfg.backbone_weights,
        trainable_layers=cfg.trainable_backbone_layers,
        load_weights=load_backbone_weights,
    )
    mean, std = input_normalisation(cfg.backbone)
    common = dict(min_size=cfg.min_size, max_size=cfg.max_size, image_mean=list(mean), image_std=list(std))
    spec = detector_spec(cfg.detector)
    return _BUILDERS[spec.builder](cfg, backbone, spec, resolved_prior(cfg), common)


def _head_options(cfg: ModelConfig) -> dict[str, Any]:
    """The one-stage heads' loss options: focal (baseline) or Sampling-Free, guided scaling and its form."""
    return dict(focal=cfg.method == "baseline", guided=cfg.uses_guided_scaling, guided_form=cfg.guided_form,
                freeze_after=cfg.guide_freeze_steps)


def build_retinanet(cfg: ModelConfig, backbone: nn.Module, spec: DetectorSpec, prior: float,
                    common: dict[str, Any]) -> nn.Module:
    anchors = retinanet_anchor_generator(cfg.anchor_base_size)
    head = SFRetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], cfg.num_classes,
                           prior=prior, **_head_options(cfg))
    model = SFRetinaNet(backbone, cfg.num_classes, anchor_generator=anchors, head=head,
                        score_thresh=cfg.effective_score_thresh, nms_thresh=cfg.nms_thresh,
                        detections_per_img=cfg.detections_per_img, **common)
    model.box_coder = head.box_coder  # decode with the weights the loss encoded with
    return model


def build_fcos(cfg: ModelConfig, backbone: nn.Module, spec: DetectorSpec, prior: float,
               common: dict[str, Any]) -> nn.Module:
    anchors = fcos_anchor_generator()
    head = SFFCOSHead(backbone.out_channels, 1, cfg.num_classes, prior=prior, **_head_options(cfg))
    return SFFCOS(backbone, cfg.num_classes, anchor_generator=anchors, head=head,
                  score_thresh=cfg.effective_score_thresh, nms_thresh=cfg.nms_thresh,
                  detections_per_img=cfg.detections_per_img, **common)


def build_rcnn(cfg: ModelConfig, backbone: nn.Module, spec: DetectorSpec, prior: float,
               common: dict[str, Any]) -> nn.Module:
    """Faster R-CNN, or Mask R-CNN when the table row has masks."""
    detector_cls = MaskRCNN if spec.has_masks else FasterRCNN
    model = detector_cls(
        backbone,
        num_classes=cfg.num_classes + 1,  # + background, torchvision's convention for R-CNNs
        rpn_anchor_generator=rpn_anchor_generator(cfg.anchor_base_size),
        # The authors' FPN setting: about 1000 proposals per image reach the RoI head, in training and test.
        rpn_pre_nms_top_n_train=2000,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=1000,
        box_score_thresh=cfg.effective_score_thresh,
        box_nms_thresh=cfg.nms_thresh,
        box_detections_per_img=cfg.detections_per_img,
        **common,
    )
    if spec.has_masks and cfg.mask_head_channels != 256:  # 256: torchvision's own head, as before
        width = cfg.mask_head_channels
        model.roi_heads.mask_head = MaskRCNNHeads(backbone.out_channels, [width] * 4, 1)
        model.roi_heads.mask_predictor = MaskRCNNPredictor(width, width, cfg.num_classes + 1)
    init_box_predictor(model.roi_heads.box_predictor)
    if spec.has_masks:
        init_mask_predictor(model.roi_heads.mask_predictor)
    if cfg.method != "baseline":
        model.rpn = _rpn(model.rpn, cfg, unsampled=True)
        model.roi_heads = _unsampled_roi_heads(model.roi_heads, cfg.uses_guided_scaling, cfg.rcnn_guide_delta,
                                               cfg.mask_positives_per_image)
    elif cfg.rpn_straddle_thresh is not None:
        model.rpn = _rpn(model.rpn, cfg, unsampled=False)
    if cfg.uses_optimal_init:
        set_rpn_prior(model.rpn, prior)
    return model


# The table (sfdeploy.models.table) names each detector's builder; these are they.
_BUILDERS = {"build_retinanet": build_retinanet, "build_fcos": build_fcos, "build_rcnn": build_rcnn}


def init_box_predictor(predictor: FastRCNNPredictor) -> None:
    """Start the RoI classifier near uniform and the box deltas near 0, as the authors' FPNPredictor does.

    The authors' code (like maskrcnn-benchmark and detectron2) draws cls_score from N(0, 0.01) and bbox_pred from
    N(0, 0.001) with zero biases. torchvision keeps nn.Linear's default (uniform +-1/sqrt(1024), std 0.018): about
    2x larger class logits and 18x larger box deltas at step 0, for every method alike.
    """
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)


def init_mask_predictor(predictor: MaskRCNNPredictor) -> None:
    """Start the mask logits near 0 (an uninformative 0.69 loss), as detectron2 does (normal, std 0.001).

    torchvision initialises the 1x1 logits conv with kaiming_normal(fan_out): with C+1 output channels that is a
    std of sqrt(2 / (C+1)) (0.63 for 4 classes) over 256 ReLU inputs, so the first logits are ~+-20 and every
    variant started at a mask loss of 11-13 with a gradient norm near 200.
    """
    nn.init.normal_(predictor.mask_fcn_logits.weight, std=0.001)
    nn.init.zeros_(predictor.mask_fcn_logits.bias)


def _rpn(rpn, cfg: ModelConfig, unsampled: bool) -> StraddleAwareRPN:  # type: ignore[no-untyped-def]
    """torchvision's RPN rebuilt as ours: un-sampled (ce / sampling_free) or sampled with the straddle option."""
    kwargs = dict(
        fg_iou_thresh=rpn.proposal_matcher.high_threshold, bg_iou_thresh=rpn.proposal_matcher.low_threshold,
        batch_size_per_image=rpn.fg_bg_sampler.batch_size_per_image,
        positive_fraction=rpn.fg_bg_sampler.positive_fraction,
        pre_nms_top_n=rpn._pre_nms_top_n, post_nms_top_n=rpn._post_nms_top_n,
        nms_thresh=rpn.nms_thresh, score_thresh=rpn.score_thresh, straddle_thresh=cfg.rpn_straddle_thresh,
    )
    if unsampled:
        return UnsampledRPN(rpn.anchor_generator, rpn.head, guided=cfg.uses_guided_scaling,
                            learn_delta=cfg.rcnn_guide_delta, **kwargs)
    return StraddleAwareRPN(rpn.anchor_generator, rpn.head, **kwargs)


def _unsampled_roi_heads(heads, guided: bool, learn_delta: bool,  # type: ignore[no-untyped-def]
                         mask_positives: int | None) -> UnsampledRoIHeads:
    return UnsampledRoIHeads(
        heads.box_roi_pool, heads.box_head, heads.box_predictor,
        fg_iou_thresh=heads.proposal_matcher.high_threshold, bg_iou_thresh=heads.proposal_matcher.low_threshold,
        batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
        positive_fraction=heads.fg_bg_sampler.positive_fraction,
        bbox_reg_weights=heads.box_coder.weights,
        score_thresh=heads.score_thresh, nms_thresh=heads.nms_thresh, detections_per_img=heads.detections_per_img,
        mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head, mask_predictor=heads.mask_predictor,
        guided=guided, learn_delta=learn_delta, mask_positives_per_image=mask_positives,
    )
