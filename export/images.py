"""Pixels to a task's input: image files (PNG, JPEG, WebP) and uint8 or 0-1 arrays, normalized with the
bundle's own mean and std (torch-free: Pillow and numpy).

The conventions, shared by every route:
- uint8 arrays and 8-bit images are pixels 0-255, 16-bit images 0-65535: scaled to 0-1, then normalized
  by the server; an alpha channel is dropped (as Pillow's convert does), a palette looked up;
- float arrays are normalized input unless the request says ``normalized: false``; then they are 0-1
  pixels and the server normalizes them (values outside [0, 1] are refused).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .bundle import TaskSpec
from .decode import RequestError

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
IMAGE_FORMATS = ["PNG", "JPEG", "WEBP"]
# Modes read as they are: 8-bit ones through Pillow's own conversion to L or RGB (alpha dropped, palette
# looked up, bilevel 1 -> 255), 16-bit grayscale scaled by 1/65535 (a 16-bit RGB PNG arrives from Pillow
# as 8-bit RGB already).
EIGHT_BIT_MODES = ("1", "L", "P", "LA", "PA", "RGB", "RGBA")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I")
READABLE_MODES = EIGHT_BIT_MODES + SIXTEEN_BIT_MODES
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


def decode_images(files: Sequence[bytes], spec: TaskSpec, max_values: int) -> np.ndarray:
    """Normalized input [B, C, H, W] of PNG, JPEG or WebP files. Every header is read first: 413 when
    the images together declare more than ``max_values`` values (width x height x channels x frames),
    before a single pixel is decoded."""
    from PIL import Image

    c = spec.input_shape[1]
    if c not in _MODES:
        raise RequestError(400, f"image uploads need a 1- or 3-channel task; this one takes {c} channels")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the budget below decides
        images = [_open_image(data, i, len(files)) for i, data in enumerate(files)]
        try:
            declared = sum(_declared_values(im, c) for im in images)
            if declared > max_values:
                sizes = ", ".join(f"{im.width}x{im.height} {im.mode}" for im in images)
                raise RequestError(
                    413,
                    f"the images declare {declared} values ({sizes}), over this server's limit of "
                    f"{max_values} (width x height x channels x frames); send smaller images",
                )
            pixels = np.concatenate([_pixels01(im, spec) for im in images])
        finally:
            for im in images:
                im.close()
    return normalize(pixels, spec)


def _open_image(data: bytes, index: int, count: int) -> Any:
    """The image of ``data`` with only its header read (Pillow decodes lazily)."""
    from PIL import Image, UnidentifiedImageError

    which = f"image {index + 1} of {count}" if count > 1 else "the image"
    try:
        im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"{which} is far over this server's size limit: {e}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise RequestError(400, f"{which} is not a readable PNG or JPEG (or WebP) file: {e}") from None
    if im.mode not in READABLE_MODES:
        im.close()
        raise RequestError(
            415, f"{which} has pixel mode {im.mode}; readable modes are {', '.join(READABLE_MODES)}"
        )
    return im


def _declared_values(im: Any, channels: int) -> int:
    """Values decoding ``im`` takes, from its header: width x height x channels x frames."""
    return im.width * im.height * max(len(im.getbands()), channels) * getattr(im, "n_frames", 1)


def _pixels01(im: Any, spec: TaskSpec) -> np.ndarray:
    """The first frame of ``im`` as 0-1 pixels [1, C, H, W] in the task's channels and size (bilinear)."""
    from PIL import Image

    c, h, w = spec.input_shape[1:]
    try:
        if im.mode in SIXTEEN_BIT_MODES:
            gray = np.asarray(im, dtype=np.float64)
            if gray.size and (gray.min() < 0 or gray.max() > 65535):
                raise RequestError(400, f"a {im.mode} image must hold values in [0, 65535]")
            if gray.shape != (h, w):
                f32 = Image.fromarray(gray.astype(np.float32))
                gray = np.asarray(f32.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)
            px = np.repeat((gray / 65535.0)[..., None], c, axis=-1)
        else:
            im = im.convert(_MODES[c])
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            px = np.asarray(im, dtype=np.uint8) / 255.0
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt pixel data
        raise RequestError(400, f"the image data cannot be decoded: {e}") from None
    return px.reshape(h, w, c).transpose(2, 0, 1)[None]
