"""Images of every PIL mode become exact 8-bit RGB: 16-bit and float greyscale scaled,
transparency composited over white, EXIF orientation applied -- through the one
``open_rgb`` every reader uses (here via real PNG/TIFF/GIF files)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from divot_llm.data.clip_sampling import MediaError, image_clip
from divot_llm.data.images import ALPHA_BACKGROUND, open_rgb, to_rgb


def saved(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def rgb_of(data: bytes) -> np.ndarray:
    image = open_rgb(data)
    assert image.mode == "RGB"
    return np.asarray(image)


def grey(values_hw: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values_hw, dtype=np.uint8)[..., None], 3, axis=2)


def test_white_is_the_documented_background():
    assert ALPHA_BACKGROUND == 255


def test_16_bit_greyscale_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535], [128, 129, 385, 65407]], dtype=np.uint16)
    data = saved(Image.fromarray(values))  # a 16-bit greyscale PNG
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    # round(v / 257): 128/257 = 0.498 -> 0, 129/257 = 0.502 -> 1, 385/257 = 1.498 -> 1
    assert np.array_equal(rgb_of(data), grey([[0, 1, 128, 255], [0, 1, 1, 255]]))


def test_32_bit_integer_greyscale_is_read_as_16_bit_intensity():
    values = np.array([[-5, 0, 514], [65535, 70000, 32896]], dtype=np.int32)
    data = saved(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert np.array_equal(rgb_of(data), grey([[0, 0, 2], [255, 255, 128]]))


def test_float_greyscale_is_read_as_unit_intensity():
    values = np.array([[0.0, 0.5, 1.0], [-1.0, 2.0, np.nan]], dtype=np.float32)
    data = saved(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert np.array_equal(rgb_of(data), grey([[0, 128, 255], [0, 255, 0]]))


def test_alpha_is_composited_over_white():
    rgba = np.array([[[200, 100, 0, 51], [10, 20, 30, 255], [99, 99, 99, 0]]], dtype=np.uint8)
    # round((c * a + 255 * (255 - a)) / 255): 200 at alpha 51 -> (10200 + 52020) / 255 = 244
    assert np.array_equal(rgb_of(saved(Image.fromarray(rgba))), [[[244, 224, 204], [10, 20, 30], [255] * 3]])
    la = np.array([[[0, 128], [100, 255], [0, 0]]], dtype=np.uint8)
    la_data = saved(Image.fromarray(la, "LA"))
    assert np.array_equal(rgb_of(la_data), grey([[127, 100, 255]]))  # 255 * 127 / 255 = 127


def test_palette_with_a_transparent_index():
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 - 3) * 3)
    palette.putdata([0, 1, 2])
    for fmt in ("PNG", "GIF"):
        data = saved(palette, fmt, transparency=1)  # green is transparent
        assert Image.open(io.BytesIO(data)).mode == "P"
        assert np.array_equal(rgb_of(data), [[[255, 0, 0], [255, 255, 255], [0, 0, 255]]])
    assert np.array_equal(rgb_of(saved(palette)), [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]])


def test_colour_key_transparency_of_greyscale_and_rgb():
    levels = Image.fromarray(np.array([[0, 100, 200]], dtype=np.uint8))
    assert np.array_equal(rgb_of(saved(levels, transparency=100)), grey([[0, 255, 200]]))
    colours = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8))
    assert np.array_equal(rgb_of(saved(colours, transparency=(4, 5, 6))), [[[1, 2, 3], [255, 255, 255]]])
    sixteen = Image.fromarray(np.array([[514, 4000]], dtype=np.uint16))
    assert np.array_equal(rgb_of(saved(sixteen, transparency=4000)), grey([[2, 255]]))


def test_cmyk_bilevel_and_plain_modes():
    cmyk = Image.new("CMYK", (4, 1))
    cmyk.putdata([(0, 255, 255, 0), (255, 0, 255, 0), (0, 0, 0, 255), (0, 0, 0, 0)])
    data = saved(cmyk, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert np.array_equal(rgb_of(data), [[[255, 0, 0], [0, 255, 0], [0, 0, 0], [255, 255, 255]]])
    bilevel = Image.fromarray(np.array([[True, False]]))
    assert Image.open(io.BytesIO(saved(bilevel))).mode == "1"
    assert np.array_equal(rgb_of(saved(bilevel)), grey([[255, 0]]))
    levels = np.array([[0, 77, 255]], dtype=np.uint8)
    assert np.array_equal(rgb_of(saved(Image.fromarray(levels))), grey(levels))


def test_exif_orientation_is_applied_once():
    pixels = np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)  # 2 wide, 1 high: red, blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    data = saved(Image.fromarray(pixels), exif=exif.tobytes())
    upright = open_rgb(data)
    assert np.array_equal(np.asarray(upright), [[[255, 0, 0]], [[0, 0, 255]]])  # 1 wide, 2 high
    assert np.array_equal(np.asarray(to_rgb(upright)), np.asarray(upright))


def test_the_clip_of_a_16_bit_image_has_the_scaled_value():
    """``image_clip`` (the loader, de-tokenizer examples, contact sheets, inference) goes through it."""
    data = saved(Image.fromarray(np.full((8, 8), 128 * 257, dtype=np.uint16)))
    clip = image_clip(data, frames_per_clip=2, image_size=4, as_uint8=True)
    assert clip.shape == (1, 2, 3, 4, 4) and bool((clip == 128).all())
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # fully transparent black
    assert bool((image_clip(Image.fromarray(rgba), 1, 4, as_uint8=True) == 255).all())


def test_undecodable_images_are_media_errors():
    good = saved(Image.new("RGB", (32, 32), (1, 2, 3)))
    for data in (good[: len(good) // 2], b"not an image at all"):
        with pytest.raises(MediaError) as caught:
            open_rgb(data)
        assert caught.value.reason == "corrupt_image"
