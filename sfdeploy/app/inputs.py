"""Demo inputs: an upload (file path or inline data: URL) checked against the HTTP service's caps before it is
decoded, then decoded by the shared loader; big images are downscaled for the screen."""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sfdeploy import limits
from sfdeploy.processing import load_image

from .common import one_line

# Uploads get the HTTP service's caps (sfdeploy.limits): gradio refuses bigger files at /upload, load_input checks
# every file's size and raw_upload_path every inline data: URL's size before decoding; pixels are checked from the
# header before decoding; bigger-than-screen images are shown (and run) downscaled to keep the UI responsive.
MAX_UPLOAD_BYTES = limits.MAX_IMAGE_BYTES
MAX_PIXELS = limits.MAX_IMAGE_PIXELS
DISPLAY_MAX_SIDE = 1280


class BadImage(ValueError):
    """The upload is not a usable image; the message is shown to the user."""


@dataclass(frozen=True)
class RejectedUpload:
    """What raw_upload_path hands on for an upload refused before decoding; load_input turns it into BadImage."""

    reason: str


def _too_big(size: int) -> str:
    return (f"the upload is {size / 2**20:.1f} MB, over the limit of {MAX_UPLOAD_BYTES / 2**20:.0f} MB "
            "(the same as the HTTP service's)")


def load_input(path: str | Path | bytes | RejectedUpload | None) -> tuple[np.ndarray, str]:
    """Upload (file path, or the bytes of an inline data: URL) -> (uint8 HWC RGB, note). Bytes and pixels are
    checked against the service's caps before decoding; big images are downscaled."""
    if path is None:
        raise BadImage("no image")
    if isinstance(path, RejectedUpload):
        raise BadImage(path.reason)
    if isinstance(path, (bytes, bytearray)):
        source: Any = bytes(path)
        size = len(source)
    else:
        source = str(path)
        try:
            size = os.stat(source).st_size
        except OSError:
            raise BadImage("the upload did not arrive; please try again") from None
    if size > MAX_UPLOAD_BYTES:
        raise BadImage(_too_big(size))
    try:
        image = load_image(source, max_pixels=MAX_PIXELS, name="the upload")
    except FileNotFoundError:
        raise BadImage("the upload did not arrive; please try again") from None
    except (ValueError, OSError, MemoryError) as exc:  # InvalidImageError / ImageTooLargeError are ValueErrors
        raise BadImage(one_line(exc)) from None
    note = ""
    h, w = image.shape[:2]
    if max(h, w) > DISPLAY_MAX_SIDE:
        from PIL import Image

        scale = DISPLAY_MAX_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        note = f"downscaled from {w}x{h} to {size[0]}x{size[1]} for the demo"
    return np.ascontiguousarray(image), note


def example_images() -> list[str]:
    try:
        from importlib.resources import files

        folder = Path(str(files("sfdeploy") / "assets"))
    except Exception:  # noqa: BLE001
        folder = Path(__file__).resolve().parents[1] / "assets"
    return [str(p) for p in sorted(folder.glob("*.png"))]


def raw_upload_path(payload: Any) -> str | bytes | RejectedUpload | None:
    """Preprocessing for the input gr.Image: the uploaded file's path, not decoded. gradio's own decoding would
    fail with a bare 'Error' on corrupt files; ours (load_input) gives a friendly message and applies serving's
    limits. An inline data: URL (a pasted/webcam frame, or any API client) is size-checked before its base64 is
    decoded, and decoded in memory: no temp file to leak. (An instance attribute rather than a gr.Image subclass:
    gradio writes a .pyi stub next to the file of every Component subclass.)"""
    if payload is None:
        return None
    url = getattr(payload, "url", None) or ""
    if url.startswith("data:"):
        head, sep, b64 = url.partition(",")
        if not sep or ";base64" not in head:
            return RejectedUpload("the inline upload is not a base64 data: URL")
        size = limits.base64_decoded_size(b64)
        if size > MAX_UPLOAD_BYTES:
            return RejectedUpload(_too_big(size))
        try:
            return base64.b64decode(b64, validate=False)
        except (binascii.Error, ValueError):
            return RejectedUpload("the inline upload is not valid base64")
    return str(payload.path) if getattr(payload, "path", None) else ""
