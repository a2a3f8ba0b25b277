"""A cheap "does this look like a chest radiograph?" heuristic, used to warn, never to refuse.

Why a heuristic and not a classifier: the gate runs on every upload before the model, must cost
milliseconds on a CPU and must not add weights to the project. It only needs to catch the
obvious mistakes (a photo, a screenshot, a blank scan, the wrong file) and must not nag on real
radiographs: its false-alarm rate on real chest X-rays is measured by
``scripts/measure_gating.py`` and written in ``docs/inputs.md``.

The score is a product of soft gates in [0, 1], each a linear ramp on one feature:

* colour: colourfulness of the original (radiographs are grey);
* contrast: grey-level spread (a uniform picture has none);
* texture: fine-detail energy relative to contrast (text and noise are all edges, radiographs
  are smooth at thumbnail scale) and not implausibly smooth (gradients, flat graphics);
* flatness: share of pixels in the most common grey level (documents, diagrams);
* aspect ratio: radiographs are roughly square;
* anatomy: left-right mirror symmetry plus a central bright band (mediastinum/spine) against
  darker lateral fields (lungs). This is the weakest gate: white-out lungs and rotated patients
  lower it, which is why it alone cannot drive the score to zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .tone import colourfulness

__all__ = ["CXR_LIKENESS_THRESHOLD", "CxrLikeness", "assess_cxr_likeness", "cxr_likeness"]

#: Scores below this trigger a "does not look like a chest radiograph" warning.
CXR_LIKENESS_THRESHOLD = 0.5

_GRID = 64  # side of the square thumbnail used for layout features
_TEXTURE_SIDE = 128  # longer side of the thumbnail used for the fine-detail feature


def _ramp(value: float, zero_at: float, one_at: float) -> float:
    """Linear ramp: 0 at ``zero_at``, 1 at ``one_at`` (either order), clipped to [0, 1]."""
    if zero_at == one_at:
        raise ValueError(f"ramp needs two distinct points, got {zero_at!r} twice")
    return float(np.clip((value - zero_at) / (one_at - zero_at), 0.0, 1.0))


@dataclass(frozen=True)
class CxrLikeness:
    """Score, the features it was computed from, and the reasons it is low (if it is)."""

    score: float
    features: dict[str, float]
    gates: dict[str, float]

    def reasons(self, *, below: float = 0.75) -> list[str]:
        """Human-readable reasons for each gate under ``below``, weakest first."""
        text = {
            "colour": f"it is in colour (colourfulness {self.features['colourfulness']:.0f})",
            "contrast": f"it has almost no contrast (grey-level spread {self.features['spread']:.1f})",
            "texture": (
                "its fine detail looks like text, a screen capture or noise"
                if self.features["fine_detail"] > 0.1
                else "it is implausibly smooth (a gradient or flat graphic)"
            ),
            "flatness": f"{self.features['dominant_share']:.0%} of it is one flat grey level",
            "aspect": f"its aspect ratio ({self.features['aspect']:.2f}) is unusual for a radiograph",
            "anatomy": "it lacks the symmetric chest layout (bright midline, darker lung fields)",
        }
        weak = sorted((value, key) for key, value in self.gates.items() if value < below)
        return [text[key] for _, key in weak]


def cxr_likeness(image: Image.Image) -> float:
    """Score in [0, 1]; below :data:`CXR_LIKENESS_THRESHOLD` the picture is likely not a CXR.

    Pass the original image (before grey conversion) so that colour can count against it.
    """
    return assess_cxr_likeness(image).score


def assess_cxr_likeness(image: Image.Image) -> CxrLikeness:
    """Compute the features, the gates and the score (see the module docstring)."""
    if image.width < 1 or image.height < 1:
        raise ValueError(f"cannot assess an empty image of size {image.size!r}")
    features = _features(image)
    gates = _gates(features)
    score = float(np.prod(list(gates.values())))
    return CxrLikeness(score=round(score, 6), features=features, gates=gates)


def _features(image: Image.Image) -> dict[str, float]:
    colour = colourfulness(image) if image.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr") else 0.0
    grey = image if image.mode == "L" else image.convert("L")
    grid = np.asarray(grey.resize((_GRID, _GRID), Image.Resampling.BILINEAR), dtype=np.float64)
    spread = float(grid.std())
    return {
        "colourfulness": float(colour),
        "spread": spread,
        "fine_detail": _fine_detail(grey),
        "dominant_share": _dominant_share(grid),
        "aspect": grey.width / grey.height,
        "symmetry": _mirror_symmetry(grid),
        "midline": _midline_contrast(grid, spread),
    }


def _fine_detail(grey: Image.Image) -> float:
    """Mean |image - blurred image| over the standard deviation, on a 128-px thumbnail."""
    thumb = grey.copy()
    thumb.thumbnail((_TEXTURE_SIDE, _TEXTURE_SIDE), Image.Resampling.BILINEAR)
    arr = np.asarray(thumb, dtype=np.float64)
    blurred = np.asarray(thumb.filter(ImageFilter.GaussianBlur(2)), dtype=np.float64)
    return float(np.abs(arr - blurred).mean() / (arr.std() + 1.0))


def _dominant_share(grid: np.ndarray) -> float:
    """Share of pixels in the most populated of 64 grey-level bins."""
    counts = np.bincount(np.clip(grid, 0, 255).astype(np.int64).ravel() // 4, minlength=64)
    return float(counts.max() / grid.size)


def _mirror_symmetry(grid: np.ndarray) -> float:
    """Correlation of the image with its left-right mirror (1: symmetric, -1: anti-symmetric)."""
    centred = grid - grid.mean()
    energy = float((centred * centred).sum())
    if energy <= 1e-9:
        return 0.0
    return float((centred * centred[:, ::-1]).sum() / energy)


def _midline_contrast(grid: np.ndarray, spread: float) -> float:
    """(central band - lateral bands) / spread over the middle 60 % of rows."""
    n = grid.shape[0]
    rows = slice(round(0.19 * n), round(0.81 * n))
    centre = grid[rows, round(0.42 * n) : round(0.58 * n)].mean()
    lateral = np.concatenate(
        [
            grid[rows, round(0.12 * n) : round(0.34 * n)].ravel(),
            grid[rows, round(0.66 * n) : round(0.88 * n)].ravel(),
        ]
    ).mean()
    return float((centre - lateral) / (spread + 1.0))


def _gates(f: dict[str, float]) -> dict[str, float]:
    aspect = f["aspect"]
    fine = f["fine_detail"]
    return {
        "colour": _ramp(f["colourfulness"], 45.0, 20.0),
        "contrast": _ramp(f["spread"], 4.0, 10.0),
        "texture": min(_ramp(fine, 0.45, 0.33), _ramp(fine, 0.005, 0.02)),
        "flatness": _ramp(f["dominant_share"], 0.9, 0.35),
        "aspect": min(_ramp(aspect, 0.3, 0.45), _ramp(aspect, 3.5, 2.5)),
        "anatomy": 0.35 + 0.65 * _ramp(f["symmetry"] + f["midline"], -0.2, 0.6),
    }
