"""Every odd input either becomes RGB uint8 the way the official processors see it, or one BadImage."""

import io

import numpy as np
import pytest
from PIL import Image

from radio.images import BadImage, decode_image, encode_image


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "mode_img",
    [
        Image.new("L", (13, 7), 128),
        Image.new("RGBA", (9, 9), (10, 20, 30, 255)),
        Image.new("P", (8, 5), 3),
        Image.new("CMYK", (6, 6), (0, 255, 0, 0)),
        Image.new("1", (5, 5), 1),
        Image.new("LA", (4, 4), (50, 255)),
    ],
    ids=lambda im: im.mode,
)
def test_modes_become_rgb(mode_img):
    fmt = "JPEG" if mode_img.mode == "CMYK" else "PNG"
    arr = decode_image(_encode(mode_img, fmt), "x")
    assert arr.dtype == np.uint8 and arr.shape == (mode_img.size[1], mode_img.size[0], 3)


def test_rgba_is_composited_on_white_like_transformers():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert (decode_image(_encode(img), "t") == 255).all()


def test_16_bit_is_scaled_not_clipped():
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    img = Image.fromarray(ramp)
    arr = decode_image(_encode(img), "16bit")
    assert arr[..., 0].max() == (63000 >> 8) and len(np.unique(arr[..., 0])) > 32


@pytest.mark.parametrize("size", [(1, 1), (10000, 50), (50, 10000)])
def test_extreme_sizes(size):
    arr = decode_image(_encode(Image.new("RGB", size, (1, 2, 3))), "s")
    assert arr.shape == (size[1], size[0], 3)


def test_bad_inputs_raise_one_typed_error():
    good = _encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")
    for name, data, reason in [
        ("empty.jpg", b"", "empty"),
        ("text.jpg", b"hello, I am not an image", "not a readable image"),
        ("truncated.jpg", good[: len(good) // 2], "truncated"),
        ("corrupt.png", _encode(Image.new("RGB", (32, 32)))[:40] + b"\x00" * 200, ""),
    ]:
        with pytest.raises(BadImage) as e:
            decode_image(data, name)
        assert e.value.name == name and reason in str(e.value)


def test_decompression_bomb_is_refused_before_decoding():
    big = _encode(Image.new("L", (4000, 4000)))  # tiny file, 16 Mpx
    with pytest.raises(BadImage, match="too large"):
        decode_image(big, "bomb.png", max_pixels=1_000_000)


def test_encode_roundtrip_png_is_lossless():
    arr = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode_image(arr, "png")), arr)
    assert decode_image(encode_image(arr, "jpeg")).shape == arr.shape


def test_skip_reasons_are_stable_across_runs():
    from radio.images import BadImage, decode_image

    reasons = set()
    for _ in range(3):
        with pytest.raises(BadImage) as e:
            decode_image(b"definitely not an image", name="x.jpg")
        reasons.add(e.value.reason)
    assert len(reasons) == 1 and "0x" not in reasons.pop()


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    from radio.images import decode_image

    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    arr = decode_image(buf.getvalue(), name="phone.jpg")
    assert arr.shape == (40, 20, 3)  # upright: portrait, as viewers and HF datasets show it
