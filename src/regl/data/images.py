"""Image codec: deterministic PNG bytes in, uint8 arrays (N, H, W, C) out."""

from __future__ import annotations

import io
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from regl.core.errors import ReglError

# What Pillow raises for bytes that are not an image it can read: truncated data, a header it does not know,
# a decompression bomb (more pixels than Image.MAX_IMAGE_PIXELS allows), no bytes at all.
DECODE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError,
                 TypeError, EOFError)

# Fixed encoder settings: the same pixels always give the same bytes (PIL writes no timestamp chunk).
_PNG_OPTIONS = {"format": "PNG", "compress_level": 6, "optimize": False}


def to_pil(array: np.ndarray) -> Image.Image:
    """A (H, W), (H, W, 1) or (H, W, 3) uint8 array as a PIL image (mode L or RGB)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    pil = image if isinstance(image, Image.Image) else to_pil(image)
    buf = io.BytesIO()
    pil.save(buf, **_PNG_OPTIONS)
    return buf.getvalue()


def encode_many(images: Iterable[np.ndarray | Image.Image]) -> list[bytes]:
    return [encode_png(im) for im in images]


def decode_png(data: bytes, channels: int | None = None) -> np.ndarray:
    """PNG (or any PIL-readable) bytes as a (H, W, C) uint8 array; ``channels`` forces 1 or 3."""
    with Image.open(io.BytesIO(data)) as pil:
        pil = conform(pil, channels)
        array = np.asarray(pil, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def decode_checked(data: bytes, channels: int | None, where: str) -> np.ndarray:
    """:func:`decode_png`, with bytes that do not decode reported as one line naming ``where`` (file and row)."""
    try:
        return decode_png(data, channels)
    except DECODE_ERRORS as exc:
        raise ReglError(f"{where}: {undecodable(exc)}") from None


def undecodable(exc: Exception) -> str:
    """Why an image could not be read, and what to do, in a few words."""
    if isinstance(exc, Image.DecompressionBombError):
        return (f"unreadable image: refused as a possible decompression bomb ({exc}); shrink it below "
                f"{Image.MAX_IMAGE_PIXELS} pixels (Pillow's limit) or remove it")
    detail = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
    return f"unreadable image ({detail}); fix or remove it"


def decode_many(blobs: Sequence[bytes], channels: int | None = None,
                where: Callable[[int], str] = lambda i: f"image {i}") -> np.ndarray:
    """Decode a batch of equally sized images to one (N, H, W, C) uint8 array; ``where(i)`` names image ``i``
    in an error message."""
    if not blobs:
        return np.zeros((0, 0, 0, channels or 1), dtype=np.uint8)
    first = decode_checked(blobs[0], channels, where(0))
    out = np.empty((len(blobs), *first.shape), dtype=np.uint8)
    out[0] = first
    for i, blob in enumerate(blobs[1:], start=1):
        image = decode_checked(blob, first.shape[2], where(i))
        if image.shape != first.shape:
            raise ReglError(f"{where(i)}: image is {image.shape[1]}x{image.shape[0]} pixels, the first is "
                            f"{first.shape[1]}x{first.shape[0]}; the images of a shard share one size")
        out[i] = image
    return out


def conform(pil: Image.Image, channels: int | None) -> Image.Image:
    """Convert to L (1 channel) or RGB (3 channels); ``None`` keeps grey as L and anything else as RGB."""
    if channels is None:
        channels = 1 if pil.mode in ("L", "I", "I;16", "F", "1", "LA") else 3
    mode = "L" if channels == 1 else "RGB"
    return pil if pil.mode == mode else pil.convert(mode)


def resize(pil: Image.Image, size: int) -> Image.Image:
    """Square ``size`` x ``size``: centre-crop to square, then bilinear resize."""
    w, h = pil.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        pil = pil.crop((left, top, left + side, top + side))
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BILINEAR)
    return pil
