"""Grey-level mapping shared by the PNG/JPEG and DICOM paths.

Kept apart from the decoders so that the windowing maths (DICOM PS3.3 C.11.2.1.2) is written
once and tested on plain arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "VOI_FUNCTIONS",
    "Window",
    "colourfulness",
    "composite_on_black",
    "data_range_window",
    "offsets_from",
    "window_to_uint8",
]

VOI_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})


@dataclass(frozen=True)
class Window:
    """A grey window: values at ``center - width/2`` map to black, ``center + width/2`` to white."""

    center: float
    width: float
    function: str = "LINEAR_EXACT"

    def __post_init__(self) -> None:
        """Enforce PS3.3 C.11.2.1.2: width >= 1 for LINEAR, > 0 for LINEAR_EXACT and SIGMOID."""
        if self.function not in VOI_FUNCTIONS:
            raise ValueError(
                f"VOI LUT function must be one of {sorted(VOI_FUNCTIONS)}, got {self.function!r}"
            )
        if not (np.isfinite(self.center) and np.isfinite(self.width)):
            raise ValueError(f"window centre/width must be finite, got {self.center!r}/{self.width!r}")
        too_narrow = self.width < 1.0 if self.function == "LINEAR" else self.width <= 0.0
        if too_narrow:
            raise ValueError(f"window width {self.width!r} is too small for VOI LUT function {self.function}")


def data_range_window(values: np.ndarray) -> Window:
    """The window spanning the data's own min..max (used when a file specifies none)."""
    low = float(np.min(values))
    high = float(np.max(values))
    width = max(high - low, 1.0)
    return Window(center=low + width / 2.0, width=width, function="LINEAR_EXACT")


#: Integer images spanning at most this many levels are windowed through a lookup table.
_LUT_LEVELS = 1 << 17


def window_to_uint8(values: np.ndarray, window: Window) -> np.ndarray:
    """Map values through ``window`` to 0..255 (uint8), following DICOM PS3.3 C.11.2.1.2/3.

    Integer data (a detector's 12-16-bit values) go through a table of the window's output over their own
    range: the same numbers as mapping every pixel, at a fraction of the cost (4 passes over a 3.6-megapixel
    CR instead of 8 in float64).
    """
    x = np.asarray(values)
    if np.issubdtype(x.dtype, np.integer) and x.size > 0:
        low, high = int(x.min()), int(x.max())
        if high - low < _LUT_LEVELS:
            table = _window_levels(np.arange(low, high + 1, dtype=np.float64), window)  # (levels,) uint8
            return table[offsets_from(x, low)]  # (H, W) uint8
    return _window_levels(np.asarray(x, dtype=np.float64), window)


def offsets_from(x: np.ndarray, low: int) -> np.ndarray:
    """``x - low`` for integer ``x >= low`` without overflow: in ``x``'s own type when unsigned (the difference
    never exceeds the values), in int64 when signed (a negative ``low`` can take it past the type's maximum)."""
    if np.issubdtype(x.dtype, np.unsignedinteger):
        return x - x.dtype.type(low)
    return np.subtract(x, low, dtype=np.int64)


def _window_levels(x: np.ndarray, window: Window) -> np.ndarray:
    """The window's 8-bit output at each float64 value of ``x``."""
    c, w = window.center, window.width
    if window.function == "LINEAR":
        if w <= 1.0:
            y = (x > c - 0.5).astype(np.float64)
        else:
            y = np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)
    elif window.function == "LINEAR_EXACT":
        y = np.clip((x - c) / w + 0.5, 0.0, 1.0)
    else:  # SIGMOID
        y = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -700.0, 700.0)))
    return np.rint(y * 255.0).astype(np.uint8)


def composite_on_black(image: Image.Image) -> tuple[Image.Image, bool]:
    """Drop alpha by compositing on black; return the opaque image and whether any pixel was
    transparent.

    Why black: radiographs have a black surround, and the training images were prepared the
    same way, so a transparent margin must not turn into a white frame.
    """
    if image.mode not in ("RGBA", "LA"):
        raise ValueError(f"composite_on_black expects RGBA or LA, got mode {image.mode!r}")
    alpha = image.getchannel("A")
    lowest, _ = alpha.getextrema()
    base_mode = image.mode[:-1]
    if lowest == 255:
        return image.convert(base_mode), False
    background = Image.new(base_mode, image.size, 0)
    background.paste(image.convert(base_mode), mask=alpha)
    return background, True


def colourfulness(image: Image.Image) -> float:
    """Hasler & Suesstrunk (2003) colourfulness M of an RGB image; 0 for any grey image.

    Photographs score roughly 15-110, grey radiographs 0, sepia-tinted scans below 10.
    """
    rgb = image.convert("RGB")  # always a copy: thumbnail() below works in place
    rgb.thumbnail((256, 256))
    arr = np.asarray(rgb, dtype=np.float64)
    rg = arr[..., 0] - arr[..., 1]
    yb = 0.5 * (arr[..., 0] + arr[..., 1]) - arr[..., 2]
    spread = float(np.hypot(rg.std(), yb.std()))
    mean = float(np.hypot(rg.mean(), yb.mean()))
    return spread + 0.3 * mean
