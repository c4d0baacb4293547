"""TensorRT execution helpers that need neither a GPU nor tensorrt to test: the engine's optimisation profile,
fitting an input into it, and one inference call with every TensorRT return value checked.

Why: an engine only accepts input shapes inside the profile it was built with; a 1920x1080 photo or a 100 px
side outside it makes `set_input_shape` return False and `execute_async_v3` fail with no useful message. The
predictor reads the profile from the sidecar, shrinks images to its max side (the shared resize, so coordinates
map back as for every backend) and pads short sides up to its min side (bottom/right, so coordinates are
unchanged; detections in the padding are clipped by postprocessing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

# What `sfdeploy export --format tensorrt` builds when no sizes are given: it covers every image the predictor
# sends by default (processing.DEFAULT_MAX_SIDE shrinks the long side to 2048; short sides are padded to 32).
DEFAULT_PROFILE = {"min": 32, "opt": 800, "max": 2048}


class TensorRTCallError(RuntimeError):
    """A TensorRT call returned False."""


@dataclass(frozen=True)
class Profile:
    """Square optimisation profile of the `images` input: every side must lie in [min, max]."""

    min: int
    opt: int
    max: int

    @classmethod
    def from_sidecar(cls, props: dict[str, Any]) -> "Profile":
        """The `sfdeploy.tensorrt` entry of an engine sidecar; engines built before profiles were recorded there
        get the old export default (128..1333), which is what they were built with."""
        import json

        raw = props.get("sfdeploy.tensorrt")
        info = json.loads(raw) if isinstance(raw, str) else (raw or {})
        p = info.get("profile") or {"min": 128, "opt": 640, "max": 1333}
        prof = cls(int(p["min"]), int(p["opt"]), int(p["max"]))
        if not 1 <= prof.min <= prof.opt <= prof.max:
            raise ValueError(f"invalid TensorRT profile in the sidecar: {p}")
        return prof


def fit_to_profile(tensor: np.ndarray, profile: Profile) -> np.ndarray:
    """[1,3,h,w] -> [1,3,h',w'] with both sides in [profile.min, profile.max] by zero-padding bottom/right.

    Sides above max are a caller error (the predictor resizes to max_side <= profile.max first)."""
    _, _, h, w = tensor.shape
    if max(h, w) > profile.max:
        raise ValueError(f"input {h}x{w} exceeds the engine profile's max side {profile.max}")
    ph, pw = max(0, profile.min - h), max(0, profile.min - w)
    if not ph and not pw:
        return tensor
    return np.pad(tensor, ((0, 0), (0, 0), (0, ph), (0, pw)))


def check(ok: Any, what: str) -> None:
    """TensorRT's Python API reports most failures as a False return value, not an exception."""
    if ok is False:
        raise TensorRTCallError(f"TensorRT {what} failed")


def execute(context: Any, input_name: str, shape: Sequence[int], input_address: int, output_names: Sequence[str],
            output_address: Callable[[str], int], stream_handle: int) -> None:
    """Set the input shape and all tensor addresses, then enqueue; raises TensorRTCallError naming the call."""
    check(context.set_input_shape(input_name, tuple(int(d) for d in shape)),
          f"set_input_shape({input_name}, {tuple(shape)}) (outside the engine's optimisation profile?)")
    check(context.set_tensor_address(input_name, int(input_address)), f"set_tensor_address({input_name})")
    for name in output_names:
        check(context.set_tensor_address(name, int(output_address(name))), f"set_tensor_address({name})")
    check(context.execute_async_v3(stream_handle), "execute_async_v3")
