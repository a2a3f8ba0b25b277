"""The original (pre-windowing) pixel values of a deep radiograph, kept as a 16-bit grey PNG.

Why: the 8-bit image the model sees has been windowed once (the file's VOI window); a reader who wants
another window (lung, bone...) needs the detector values. They are kept as unsigned 16-bit integers plus a
linear map back to the file's units (after the DICOM Modality LUT: Rescale Slope/Intercept)::

    value = stored * slope + intercept

Integer data spanning at most 65,536 levels are kept exactly (``slope`` 1, ``intercept`` = the minimum);
anything else (fractional slopes, wider ranges) is quantised to 65,536 levels over its range. The PNG holds
IHDR/IDAT/IEND only (no text, no time, no profile), like the 8-bit one (:mod:`.deid`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .tone import offsets_from

__all__ = ["ORIGINAL_LEVELS", "OriginalPixels", "decode_original_png", "encode_original", "original_png"]

#: Levels of the stored original (unsigned 16 bit).
ORIGINAL_LEVELS = 65_536


@dataclass(frozen=True)
class OriginalPixels:
    """Stored 16-bit values and the map back to the file's units (``value = stored * slope + intercept``)."""

    stored: np.ndarray  # (H, W) uint16
    slope: float
    intercept: float

    def __post_init__(self) -> None:
        if self.stored.ndim != 2 or self.stored.dtype != np.uint16:
            raise ValueError(f"stored originals must be a 2-D uint16 array, got {self.stored.dtype} "
                             f"of shape {self.stored.shape}")
        if not (np.isfinite(self.slope) and self.slope > 0 and np.isfinite(self.intercept)):
            raise ValueError(f"slope must be finite and > 0 and intercept finite, got {self.slope!r}/{self.intercept!r}")

    def values(self) -> np.ndarray:
        """The values in the file's units, (H, W) float64."""
        return self.stored.astype(np.float64) * self.slope + self.intercept


def encode_original(values: np.ndarray) -> OriginalPixels:
    """Pack (H, W) values in the file's units into 16 bits, exactly where they are integers spanning < 65,536 levels."""
    x = np.asarray(values)
    if x.ndim != 2 or x.size == 0 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"originals must be a non-empty 2-D numeric array, got {x.dtype} of shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):  # finite and whole by type: no float64 copy, no checks
        low_i, high_i = int(x.min()), int(x.max())
        if high_i - low_i < ORIGINAL_LEVELS:
            return OriginalPixels(offsets_from(x, low_i).astype(np.uint16), slope=1.0,
                                  intercept=float(low_i))
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("originals must be finite (the array holds NaN or infinity)")
    low, high = float(x.min()), float(x.max())
    if np.all(x == np.rint(x)) and high - low < ORIGINAL_LEVELS:
        return OriginalPixels((x - low).astype(np.uint16), slope=1.0, intercept=low)
    slope = max(high - low, 1e-12) / (ORIGINAL_LEVELS - 1)
    stored = np.clip(np.rint((x - low) / slope), 0, ORIGINAL_LEVELS - 1).astype(np.uint16)
    return OriginalPixels(stored, slope=slope, intercept=low)


def original_png(stored: np.ndarray) -> bytes:
    """A 16-bit grey PNG of ``stored`` (uint16, (H, W)) with IHDR/IDAT/IEND chunks only."""
    from .deid import ALLOWED_PNG_CHUNKS, png_chunk_types

    if stored.ndim != 2 or stored.dtype != np.uint16:
        raise ValueError(f"a 16-bit PNG needs a 2-D uint16 array, got {stored.dtype} of shape {stored.shape}")
    clean = Image.frombytes("I;16", (stored.shape[1], stored.shape[0]), stored.astype("<u2").tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=6)
    data = buffer.getvalue()
    unexpected = set(png_chunk_types(data)) - ALLOWED_PNG_CHUNKS
    if unexpected:  # defensive, as for the 8-bit PNG
        raise RuntimeError(f"PNG encoder wrote unexpected chunks {sorted(unexpected)}")
    return data


def decode_original_png(data: bytes) -> np.ndarray:
    """The (H, W) uint16 values of a PNG written by :func:`original_png`."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in ("I;16", "I"):
            raise ValueError(f"not a 16-bit grey PNG: Pillow reads it as mode {image.mode!r}")
        return np.asarray(image).astype(np.uint16)
