"""PNG and JPEG decoding into a grey radiograph.

Pillow reads only the header in ``Image.open``; the declared size has already been checked by
:mod:`.sniff` before we get here, and pixel decoding happens in ``load()``, where truncation
and corruption surface as exceptions that we turn into :class:`CorruptImageError`.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps

from .errors import CorruptImageError, ImageTooLargeError
from .original import encode_original
from .tone import colourfulness, composite_on_black, data_range_window, window_to_uint8
from .types import DecodedPicture, MetadataValue

__all__ = ["COLOUR_WARN_THRESHOLD", "decode_raster"]

#: Colourfulness above which we tell the user that colour was discarded (sepia scans stay quiet).
COLOUR_WARN_THRESHOLD = 8.0

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


def decode_raster(data: bytes, *, fmt: str, name: str, bit_depth: int) -> DecodedPicture:
    """Decode PNG/JPEG bytes (already sniffed and size-checked) into a grey picture."""
    if fmt == "png":
        _verify_png(data, name)
    image = _open_and_load(data, name)
    warnings: list[str] = []
    image = _apply_exif_orientation(image, warnings)
    original_mode = image.mode
    grey, colour, window = _to_grey(image, warnings)
    # Deeper than 8 bits: the values the data-range window was applied to are kept (16-bit originals).
    original = encode_original(np.asarray(image)) if window and image.mode in _HIGH_DEPTH_MODES else None
    metadata: dict[str, MetadataValue] = {
        "source_format": fmt,
        "original_mode": original_mode,
        "bits_stored": bit_depth,
        "window_center": window[0] if window else None,
        "window_width": window[1] if window else None,
        "window_source": "data_range" if window else "none",
        "frames": _frame_count(image),
    }
    if original is not None:
        metadata.update(window_function="LINEAR_EXACT", original_slope=original.slope,
                        original_intercept=original.intercept, display_inverted=0)
    if metadata["frames"] != 1:
        warnings.append(f"the file holds {metadata['frames']} frames; only the first is used.")
    return DecodedPicture(grey=grey, metadata=metadata, warnings=warnings, colour=colour, original=original)


def _verify_png(data: bytes, name: str) -> None:
    """Check every PNG chunk CRC up to IEND without decoding pixels (catches bit rot, cuts)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(name, f"Pillow refused it as a decompression bomb ({exc})") from exc
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(name, f"the PNG is damaged or truncated ({_short(exc)})") from exc


def _open_and_load(data: bytes, name: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(name, f"Pillow refused it as a decompression bomb ({exc})") from exc
    except _DECODE_ERRORS as exc:
        kind = "PNG" if data.startswith(b"\x89PNG") else "JPEG"
        raise CorruptImageError(name, f"the {kind} is damaged or truncated ({_short(exc)})") from exc
    return image


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:160]


def _apply_exif_orientation(image: Image.Image, warnings: list[str]) -> Image.Image:
    """Rotate per the EXIF Orientation tag, as a viewer would, and say so."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:
        return image
    if orientation in (None, 1):
        return image
    warnings.append(f"the image was rotated/flipped according to its EXIF orientation ({orientation}).")
    transposed = ImageOps.exif_transpose(image)
    return transposed if transposed is not None else image


def _frame_count(image: Image.Image) -> int:
    return int(getattr(image, "n_frames", 1) or 1)


def _to_grey(
    image: Image.Image, warnings: list[str]
) -> tuple[Image.Image, Image.Image | None, tuple[float, float] | None]:
    """Return (grey "L" image, RGB original if colourful, data-range window if one was applied)."""
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        values = np.asarray(image)
        window = data_range_window(values)
        grey = Image.fromarray(window_to_uint8(values, window), mode="L")
        return grey, None, (window.center, window.width)
    if mode in ("1", "L"):
        return image.convert("L"), None, None
    if mode in ("P", "PA"):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("LA", "La", "RGBA", "RGBa"):
        image, transparent = composite_on_black(image.convert(mode.replace("a", "A")))
        if transparent:
            warnings.append("transparent pixels were composited on black.")
        if image.mode == "L":
            return image, None, None
    rgb = image.convert("RGB")
    score = colourfulness(rgb)
    if score > COLOUR_WARN_THRESHOLD:
        warnings.append(
            f"the image is in colour (colourfulness {score:.0f}); it was converted to grey and any "
            "colour annotations were lost."
        )
    return rgb.convert("L"), rgb, None
