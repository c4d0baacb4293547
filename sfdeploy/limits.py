"""Input limits shared by every entry point that accepts images from outside (HTTP service, demo).

One place, so that the demo cannot become the way around the service's caps: bytes are checked before anything
is decoded (base64 included), pixels from the image header before the pixels are decoded.
"""

from __future__ import annotations

MAX_IMAGE_BYTES = 20 * 1024 * 1024  # an encoded image file (or its base64 payload, decoded size)
MAX_IMAGE_PIXELS = 40_000_000  # width x height, read from the header


def base64_decoded_size(text: str) -> int:
    """Upper bound of the bytes `text` decodes to (whitespace counted: never an underestimate), without decoding."""
    return (len(text) * 3) // 4
