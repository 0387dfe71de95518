"""Image decoding: any file a user points us at becomes an RGB uint8 array, or one typed error.

The caching job decodes thousands of files written by other people. Each odd one must either be
converted the way the teachers' official processors would see it, or raise :class:`BadImage`, which
the job catches per image, records with its reason, and moves on.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps

__all__ = ["BadImage", "DEFAULT_MAX_PIXELS", "decode_image", "to_rgb", "encode_image", "decode_student_image"]

# Pillow warns at ~89 Mpx and raises at twice that. We refuse earlier and by our own rule, so a
# decompression bomb is one recorded skip rather than a warning storm or an out-of-memory kill.
DEFAULT_MAX_PIXELS = 64_000_000


class BadImage(ValueError):
    """A file that cannot be turned into an RGB image: corrupt, truncated, empty, not an image, too big."""

    def __init__(self, name: str, reason: str) -> None:
        # the reason is recorded in the cache manifest: keep it stable from run to run (PIL's messages name
        # the address of an in-memory stream, "<_io.BytesIO object at 0x7f...>")
        reason = re.sub(r" at 0x[0-9a-fA-F]+", "", reason)
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB the way transformers' ``convert_rgb`` does.

    Alpha (RGBA, LA, PA, palette with transparency) is composited on white, as the official image
    processors do. 16-bit and 32-bit integer grayscale is scaled to 8 bits by its full range rather than
    clipped (Pillow's plain ``convert`` would saturate almost every pixel to white). CMYK, YCbCr, LAB,
    HSV and 1-bit go through Pillow's own conversion.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if img.mode == "I":
            # 32-bit ints: PNG stores 16-bit grayscale this way in some Pillow versions.
            arr = np.clip(arr, 0, 65535)
        arr8 = (arr.astype(np.uint32) >> 8).astype(np.uint8) if arr.max(initial=0) > 255 else arr.astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = np.nan_to_num((arr - lo) * scale).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes | Image.Image, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes (or an already opened PIL image) to an RGB array.

    Returns ``uint8`` of shape (H, W, 3). Raises :class:`BadImage` naming ``name`` and the reason for
    empty, corrupt, truncated, non-image or oversized inputs; nothing else escapes.
    """
    if isinstance(data, Image.Image):
        img = data
    else:
        if data is None or len(data) == 0:
            raise BadImage(name, "empty file (0 bytes)")
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise BadImage(name, f"too large, possible decompression bomb ({e})") from None
        except Exception as e:  # PIL raises UnidentifiedImageError, SyntaxError, OSError, ...
            raise BadImage(name, f"not a readable image ({type(e).__name__}: {e})") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise BadImage(name, f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise BadImage(
            name, f"too large: {w}x{h} = {w * h} pixels > max_pixels={max_pixels} (possible decompression bomb)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()  # forces a full decode, so truncation shows up here and not later
            # EXIF orientation, as HF datasets and transformers apply it: a phone photo is cached upright
            img = ImageOps.exif_transpose(img)
            rgb = to_rgb(img)
            arr = np.asarray(rgb, dtype=np.uint8)
    except BadImage:
        raise
    except Exception as e:
        raise BadImage(name, f"corrupt or truncated image data ({type(e).__name__}: {e})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise BadImage(name, f"decoded to unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr)


def encode_image(arr_HW3: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """uint8 (H, W, 3) -> bytes. ``raw``: the pixels themselves (lossless, decoded by a reshape; the cache's
    Parquet compression shrinks them); ``png``: lossless, ~1.3 ms to decode at 224 px; ``jpeg``: lossy."""
    if fmt == "raw":
        return np.ascontiguousarray(arr_HW3, dtype=np.uint8).tobytes()
    img = Image.fromarray(np.ascontiguousarray(arr_HW3, dtype=np.uint8))
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)  # fast; PNG is lossless at every level
    elif fmt in ("jpeg", "jpg"):
        img.save(buf, format="JPEG", quality=quality)
    else:
        raise ValueError(f"unknown image format {fmt!r}; use 'raw', 'png' or 'jpeg'")
    return buf.getvalue()


def decode_student_image(data: bytes, fmt: str, size_hw: tuple[int, int]) -> np.ndarray:
    """A stored student view -> uint8 (H, W, 3)."""
    if fmt == "raw":
        return np.frombuffer(data, np.uint8).reshape(*size_hw, 3)
    img = Image.open(io.BytesIO(data))
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
