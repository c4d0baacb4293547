"""sfdeploy.artefact: one metadata builder; its parser reads what older releases wrote (both shapes)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfdeploy import artefact


def _old_export_props(cfg) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """What export/onnx.py wrote before sfdeploy.artefact: outputs as dicts, batch 1, repr score threshold."""
    return {"sfdeploy.config": json.dumps(cfg.to_dict()), "sfdeploy.meta": "{}",
            "sfdeploy.input": json.dumps({"name": "images", "batch": 1, "shape": [1, 3, "H", "W"]}),
            "sfdeploy.outputs": json.dumps([{"name": n} for n in artefact.output_names(cfg.has_masks)]),
            "detector": cfg.detector, "method": cfg.method, "score_thresh": repr(float("inf"))}


def _old_predictor_props(cfg) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """What serving/predictor.py's builder wrote: outputs as names, batch "1", json.dumps score threshold."""
    return {"sfdeploy.config": json.dumps(cfg.to_dict()), "sfdeploy.meta": "{}",
            "sfdeploy.input": json.dumps({"name": "images", "batch": "1"}),
            "sfdeploy.outputs": json.dumps(artefact.output_names(cfg.has_masks)),
            "detector": cfg.detector, "method": cfg.method, "score_thresh": json.dumps(float("inf"))}


@pytest.mark.parametrize("old", [_old_export_props, _old_predictor_props])
def test_parse_reads_both_old_shapes(tiny_cfg, old) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_cfg("mask_rcnn")
    md = artefact.parse_metadata(old(cfg))
    assert md["input"]["batch"] == 1
    assert md["output_names"] == ["boxes", "scores", "labels", "masks"]
    assert all(isinstance(o, dict) for o in md["outputs"])
    assert md["score_thresh"] == math.inf
    assert artefact.config_from_metadata(md, "x.onnx") == cfg


def test_built_metadata_parses_to_the_contract(tiny_cfg) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_cfg("retinanet", score_thresh=0.25, category_ids=[3, 9])
    props = artefact.build_metadata(cfg, {"step": 4}, exporter="torchscript", opset=17, nms="torchvision")
    assert all(isinstance(v, str) for v in props.values())
    md = artefact.parse_metadata(props)
    assert md["input"]["batch"] == 1 and md["output_names"] == ["boxes", "scores", "labels"]
    assert md["outputs"][2]["range"] == [1, 2] and md["category_ids"] == [3, 9]
    assert md["score_thresh"] == 0.25 and md["meta"] == {"step": 4}
    assert artefact.config_from_metadata(md, "x.onnx") == cfg
    dyn = artefact.parse_metadata(artefact.build_metadata(cfg, None, exporter="dynamo", batch="dynamic"))
    assert dyn["input"]["batch"] == "dynamic"


def test_config_goes_through_from_artefact(tiny_cfg) -> None:  # type: ignore[no-untyped-def]
    """A config written before rcnn_guide_delta existed gets what that release trained with."""
    data = tiny_cfg("faster_rcnn").to_dict()
    del data["rcnn_guide_delta"]
    md = artefact.parse_metadata({"sfdeploy.config": json.dumps(data)})
    assert artefact.config_from_metadata(md, "old.onnx").rcnn_guide_delta is True


def test_missing_or_bad_config_is_one_line_user_error() -> None:
    from sfdeploy.errors import UserError

    with pytest.raises(UserError, match="has no 'sfdeploy.config'"):
        artefact.config_from_metadata(artefact.parse_metadata({}), "a.onnx")
    with pytest.raises(UserError, match="invalid 'sfdeploy.config'"):
        artefact.config_from_metadata(artefact.parse_metadata({"sfdeploy.config": '{"detector": "yolo"}'}), "a.onnx")


@given(st.floats(min_value=0.0, max_value=1.0, exclude_max=True) | st.none(), st.sampled_from(["baseline", "sampling_free"]))
def test_score_thresh_round_trip(value: float | None, method: str) -> None:
    from sfdeploy.config import ModelConfig

    cfg = ModelConfig(detector="retinanet", method=method, class_names=["a"], score_thresh=value)
    md = artefact.parse_metadata(artefact.build_metadata(cfg, {}, exporter="none"))
    assert md["score_thresh"] == cfg.effective_score_thresh
