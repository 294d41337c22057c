"""Still images as 8-bit RGB, whatever their PIL mode -- the one place images are opened.

* 16-bit and 32-bit integer greyscale (``I;16*``, ``I``) is read as 16-bit intensity:
  ``round(v / 257)``, values clipped to [0, 65535] (PIL's own conversion clips at 255,
  which turns a 16-bit image white).
* 32-bit float greyscale (``F``) is read as intensity in [0, 1]: ``round(255 v)``,
  clipped; NaN is black.
* Transparency (an alpha channel, a palette or colour-key ``transparency``) is composited
  over white: ``round((c * a + 255 * (255 - a)) / 255)`` per channel, so a fully
  transparent pixel is white whatever colour it stores.
* Every other mode (``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ...) uses
  PIL's conversion.
* An EXIF orientation is applied first: the image is used as viewers show it, as videos
  are with their display rotation.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps

from divot_llm.data.errors import MediaError

ALPHA_BACKGROUND = 255  # transparent pixels become white (every channel)
_INTEGER_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_EXIF_ORIENTATION = 0x0112


def open_rgb(source: bytes | str | os.PathLike) -> Image.Image:
    """A whole image file (bytes or a path) decoded to 8-bit RGB (see the module doc).

    Raises:
        MediaError: ``corrupt_image`` for anything PIL cannot decode, ``image_too_large``
            for a decompression bomb.
    """
    data = isinstance(source, (bytes, bytearray, memoryview))
    try:
        image = Image.open(io.BytesIO(source) if data else source)
        image.load()  # decode every pixel now: truncated files fail here, not later
        return to_rgb(image)
    except FileNotFoundError:
        raise  # the file went away: counted as missing, not corrupt
    except Image.DecompressionBombError as exc:
        raise MediaError("image_too_large", str(exc)) from exc
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        raise MediaError("corrupt_image", f"{type(exc).__name__}: {exc}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened image as 8-bit RGB, upright (see the module doc); an upright RGB image
    without transparency is returned as it is."""
    image = _upright(image)
    if image.mode in (*_INTEGER_GREY, "F"):
        grey_hw = _grey_uint8(image)
        rgb_hw3 = np.repeat(grey_hw[..., None], 3, axis=2)
        alpha_hw = _colour_key_alpha(image)
        return Image.fromarray(rgb_hw3 if alpha_hw is None else _over_background(rgb_hw3, alpha_hw))
    if image.has_transparency_data:
        # "La" (premultiplied) has no direct conversion to RGBA; through LA it has
        rgba = image.convert("LA").convert("RGBA") if image.mode == "La" else image.convert("RGBA")
        rgba_hw4 = np.asarray(rgba)
        return Image.fromarray(_over_background(rgba_hw4[..., :3], rgba_hw4[..., 3]))
    return image if image.mode == "RGB" else image.convert("RGB")


def _upright(image: Image.Image) -> Image.Image:
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block: use the pixels as stored
        pass
    return image


def _grey_uint8(image: Image.Image) -> np.ndarray:
    values = np.asarray(image)
    if image.mode == "F":
        unit = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
        return np.rint(unit * 255.0).astype(np.uint8)
    sixteen = values.astype(np.int64).clip(0, 65535)
    return ((sixteen * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257), exactly


def _colour_key_alpha(image: Image.Image) -> np.ndarray | None:
    """Alpha (H, W) of a greyscale image whose ``transparency`` is one pixel value."""
    key = image.info.get("transparency")
    if not isinstance(key, (int, float)):
        return None
    return np.where(np.asarray(image) == key, 0, 255).astype(np.uint8)


def _over_background(rgb_hw3: np.ndarray, alpha_hw: np.ndarray) -> np.ndarray:
    """``rgb`` composited over ``ALPHA_BACKGROUND`` with 8-bit alpha, rounded exactly
    (255 is odd, so ``(x + 127) // 255`` is ``round(x / 255)`` with no ties)."""
    alpha = alpha_hw.astype(np.uint32)[..., None]
    mixed = rgb_hw3.astype(np.uint32) * alpha + ALPHA_BACKGROUND * (255 - alpha)
    return ((mixed + 127) // 255).astype(np.uint8)
