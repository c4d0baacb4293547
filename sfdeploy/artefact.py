"""The artefact contract (docs/CONTRACTS.md "ONNX artefact"): the one place its metadata is built and read.

ONNX `metadata_props`, the TensorRT sidecar `X.engine.json` and a Triton `config.pbtxt`'s parameters all carry the
dict `build_metadata` returns (str -> str); `parse_metadata` decodes it, including what older releases wrote
(`sfdeploy.outputs` as a list of names, `batch` as the string "1", a `repr` score threshold).
"""

from __future__ import annotations

import json
import math
from typing import Any

from sfdeploy.config import ConfigError, ModelConfig
from sfdeploy.errors import UserError

KEY_CONFIG = "sfdeploy.config"
KEY_META = "sfdeploy.meta"
KEY_VERSION = "sfdeploy.version"
KEY_EXPORTER = "sfdeploy.exporter"
KEY_OPSET = "sfdeploy.opset"
KEY_NMS = "sfdeploy.nms"
KEY_INPUT = "sfdeploy.input"
KEY_OUTPUTS = "sfdeploy.outputs"
KEY_TENSORRT = "sfdeploy.tensorrt"
KEY_PRECISION = "sfdeploy.precision"  # "int8" on quantized graphs; absent = fp32
KEY_OPENVINO = "sfdeploy.openvino"
# OpenVINO IR: the contract dict is stored key by key in the model's rt_info under this node (saved in the .xml)
OPENVINO_RT_INFO = "sfdeploy_metadata"
INPUT_NAME = "images"


def output_names(has_masks: bool) -> list[str]:
    """The graph's output names in order (Mask R-CNN adds `masks`)."""
    return ["boxes", "scores", "labels"] + (["masks"] if has_masks else [])


def output_specs(config: ModelConfig, has_masks: bool | None = None, batch: int | str = 1) -> list[dict[str, Any]]:
    """What each output holds (the `sfdeploy.outputs` value)."""
    if batch == "dynamic":  # TensorRT EfficientNMS / Triton convention: K rows per image, zero past the count
        k = int(config.detections_per_img)
        return [
            {"name": "num_detections", "dtype": "int64", "shape": ["B"]},
            {"name": "boxes", "dtype": "float32", "shape": ["B", k, 4], "format": "xyxy", "units": "canvas pixels"},
            {"name": "scores", "dtype": "float32", "shape": ["B", k]},
            {"name": "labels", "dtype": "int64", "shape": ["B", k], "range": [1, config.num_classes]}]
    masks = config.has_masks if has_masks is None else has_masks
    outs: list[dict[str, Any]] = [
        {"name": "boxes", "dtype": "float32", "shape": ["N", 4], "format": "xyxy", "units": "input pixels"},
        {"name": "scores", "dtype": "float32", "shape": ["N"]},
        {"name": "labels", "dtype": "int64", "shape": ["N"], "range": [1, config.num_classes]}]
    if masks:
        outs.append({"name": "masks", "dtype": "float32", "shape": ["N", 1, "H", "W"], "range": [0, 1]})
    return outs


def jsonable(x: Any) -> Any:
    """Checkpoint meta as plain JSON values (0-d tensors/arrays -> numbers, anything else unknown -> str)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def build_metadata(config: ModelConfig, meta: dict[str, Any] | None, *, exporter: str,
                   opset: int | None = None, nms: str | None = None, batch: int | str = 1,
                   has_masks: bool | None = None, canvas: tuple[int, int] | None = None) -> dict[str, str]:
    """The contract's metadata dict (all values strings) for an artefact of `config`.

    batch: 1 (the graph takes one image) or "dynamic" (with `canvas` (h, w): the letterbox size callers use;
    default `processing.letterbox_canvas` of the config)."""
    from sfdeploy import __version__

    shape: list[Any] = [batch if batch != "dynamic" else "B", 3, "H", "W"]
    spec: dict[str, Any] = {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "range": [0, 1],
                            "color": "RGB", "batch": batch, "shape": shape}
    if batch == "dynamic":
        if canvas is None:
            from sfdeploy.processing import letterbox_canvas

            canvas = letterbox_canvas(config.min_size, config.max_size)
        spec.update(shape=["B", 3, int(canvas[0]), int(canvas[1])], canvas=[int(canvas[0]), int(canvas[1])],
                    resize="letterbox")
    props = {
        KEY_CONFIG: json.dumps(config.to_dict()),
        KEY_META: json.dumps(jsonable(meta or {})),
        KEY_VERSION: __version__,
        KEY_EXPORTER: exporter,
    }
    if opset is not None:
        props[KEY_OPSET] = str(opset)
    if nms is not None:
        props[KEY_NMS] = nms
    props.update({
        KEY_INPUT: json.dumps(spec),
        KEY_OUTPUTS: json.dumps(output_specs(config, has_masks, batch)),
        "class_names": json.dumps(list(config.class_names)),
        "category_ids": json.dumps([config.category_id(k) for k in range(1, config.num_classes + 1)]),
        "detector": config.detector,
        "method": config.method,
        "score_thresh": json.dumps(float(config.effective_score_thresh)),
    })
    return props


def tensorrt_sidecar(onnx_props: dict[str, str], tensorrt: dict[str, Any]) -> dict[str, str]:
    """The `X.engine.json` sidecar: the ONNX graph's metadata plus `sfdeploy.tensorrt` (version, precision, profile)."""
    props = dict(onnx_props)
    props[KEY_TENSORRT] = json.dumps(tensorrt)
    return props


def openvino_metadata(onnx_props: dict[str, str], openvino: dict[str, Any]) -> dict[str, str]:
    """The OpenVINO IR's rt_info: the ONNX graph's metadata plus `sfdeploy.openvino` (version, default inference
    precision, the source graph's precision)."""
    props = dict(onnx_props)
    props[KEY_OPENVINO] = json.dumps(openvino)
    return props


def triton_parameters(onnx_props: dict[str, str]) -> dict[str, str]:
    """The parameters of a Triton model config: the artefact's whole contract metadata (unknown keys dropped)."""
    return {k: v for k, v in onnx_props.items() if k.startswith("sfdeploy.") or k in _PLAIN_KEYS}


_PLAIN_KEYS = ("class_names", "category_ids", "detector", "method", "score_thresh")


def _json(props: dict[str, Any], key: str, default: Any) -> Any:
    value = props.get(key)
    if value is None:
        return default
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _batch(value: Any) -> int | str:
    """1 for old "1" / 1, "dynamic" kept, other integers as int."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value if value is not None else 1


def _score(value: Any) -> float | None:
    """Old releases wrote repr(float) ("inf", "nan"), newer ones json.dumps ("Infinity"): both give a float."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_metadata(props: dict[str, Any]) -> dict[str, Any]:
    """Decode the contract's metadata (JSON strings) into Python values; unknown keys kept in "raw".

    Returns {"config": dict, "meta": dict, "version", "exporter", "input": dict (batch 1 | "dynamic"),
    "outputs": list of dicts (old artefacts: {"name": ...} only), "output_names": list, "class_names": list,
    "category_ids", "detector", "method", "score_thresh": float | None, "tensorrt": dict | None, "openvino": dict |
    None, "raw": props}.
    """
    spec = _json(props, KEY_INPUT, {}) or {}
    spec = dict(spec) if isinstance(spec, dict) else {}
    if "batch" in spec:
        spec["batch"] = _batch(spec["batch"])
    outputs = [o if isinstance(o, dict) else {"name": str(o)} for o in (_json(props, KEY_OUTPUTS, []) or [])]
    score = _score(props.get("score_thresh"))
    return {
        "config": _json(props, KEY_CONFIG, None),
        "meta": _json(props, KEY_META, {}) or {},
        "version": props.get(KEY_VERSION),
        "exporter": props.get(KEY_EXPORTER),
        "input": spec,
        "outputs": outputs,
        "output_names": [o.get("name") for o in outputs],
        "class_names": _json(props, "class_names", None),
        "category_ids": _json(props, "category_ids", None),
        "detector": props.get("detector"),
        "method": props.get("method"),
        "score_thresh": None if score is not None and math.isnan(score) else score,
        "tensorrt": _json(props, KEY_TENSORRT, None),
        "openvino": _json(props, KEY_OPENVINO, None),
        "raw": dict(props),
    }


def config_from_metadata(md: dict[str, Any], source: str) -> ModelConfig:
    """The artefact's ModelConfig through `ModelConfig.from_artefact` (fills what older releases trained with)."""
    if not isinstance(md.get("config"), dict):
        raise UserError(f"{source} has no '{KEY_CONFIG}' metadata; export it with `sfdeploy export`")
    try:
        return ModelConfig.from_artefact(md["config"])
    except ConfigError as exc:
        raise UserError(f"{source}: invalid '{KEY_CONFIG}' metadata: {exc}") from None


def checkpoint_metadata(config: ModelConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata of a checkpoint in the same shape as an exported artefact's (parse_metadata of the props)."""
    md = parse_metadata(build_metadata(config, meta, exporter="none"))
    md["exporter"] = None
    return md
