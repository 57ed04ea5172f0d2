"""Pixels to a task's input: image files and uint8 or 0-1 arrays, normalized with the bundle's own
mean and std (torch-free: Pillow and numpy).

The conventions, shared by every route:
- uint8 arrays and image files are pixels 0-255: scaled to 0-1, then normalized by the server;
- float arrays are normalized input unless the request says ``normalized: false``; then they are 0-1
  pixels and the server normalizes them (values outside [0, 1] are refused).
"""

from __future__ import annotations

import io

import numpy as np

from .bundle import TaskSpec
from .decode import RequestError

IMAGE_TYPES = ("image/png", "image/jpeg")
MAX_IMAGE_PIXELS = 4096 * 4096
_MODES = {1: "L", 3: "RGB"}


def normalize(pixels01: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """(pixels - mean) / std per channel, for a [B, C, H, W] array of 0-1 pixels."""
    mean = np.asarray(spec.mean, np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, np.float64).reshape(1, -1, 1, 1)
    return (pixels01.astype(np.float64) - mean) / std


def pixels_to_input(arr: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """Normalized input from uint8 pixels (0-255) or float pixels (0-1)."""
    if arr.dtype == np.uint8:
        return normalize(arr / 255.0, spec)
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise RequestError(
            400,
            "with normalized: false, float inputs are pixels in [0, 1]; got values in "
            f"[{arr.min():.4g}, {arr.max():.4g}] (send 0-255 pixels as uint8, normalized input as floats)",
        )
    return normalize(arr, spec)


def uint8_pixels(arr: np.ndarray, what: str) -> np.ndarray:
    """``arr`` as uint8 pixels; 400 saying ``what`` must be unless every value is an integer in [0, 255]."""
    if (arr != np.round(arr)).any() or arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        raise RequestError(400, f"{what} must be integers in [0, 255]")
    return arr.astype(np.uint8)


def looks_like_raw_pixels(arr: np.ndarray, spec: TaskSpec) -> bool:
    """True when every value lies in [0, 1] but the task's normalization is not the identity."""
    identity = all(m == 0 for m in spec.mean) and all(s == 1 for s in spec.std)
    return not identity and arr.size > 0 and float(arr.min()) >= 0 and float(arr.max()) <= 1


def decode_image(data: bytes, spec: TaskSpec) -> np.ndarray:
    """A PNG or JPEG file as uint8 pixels [1, C, H, W] in the task's channels and size (bilinear resize)."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = spec.input_shape[1:]
    if c not in _MODES:
        raise RequestError(400, f"image uploads need a 1- or 3-channel task; this one takes {c} channels")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise RequestError(413, f"image of {im.width}x{im.height} is over {MAX_IMAGE_PIXELS} pixels")
            im = im.convert(_MODES[c])
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            px = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise RequestError(400, f"not a readable PNG or JPEG image: {e}") from None
    return px.reshape(h, w, c).transpose(2, 0, 1)[None]
