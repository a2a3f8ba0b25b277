"""Overlays of the Explain tab: maps interpolated to the image, a colour bar with its scale, opacity."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pytest
from PIL import Image

from app.explain import HIDE_BELOW, ColourScale, colour_bar_html, draw_overlay, render_overlay
from echo_model.explain import quadrant_mass, upsample

GRID = (8, 7)  # (grid_h, grid_w): 56 patches, as on a small view
SIZE = (224, 256)  # (width, height) of the view: 32 x 32 px per patch


def _patch_map(seed: int = 0) -> np.ndarray:
    """A normalised patch map with a bright spot and noise, like an attribution map."""
    rng = np.random.default_rng(seed)
    heat = rng.random(GRID) * 0.2
    heat[2, 5] += 3.0
    heat[6, 1] += 1.0
    return (heat / heat.sum()).astype(np.float32)


def test_the_interpolated_map_is_smooth_not_patch_blocks() -> None:
    heat = _patch_map()
    values = upsample(heat, SIZE)
    assert values.shape == (SIZE[1], SIZE[0]) and (values >= 0).all()
    blocky = np.kron(heat, np.ones((32, 32), dtype=np.float32))  # what patch-constant drawing would show
    # inside a patch the values vary (no constant blocks) ...
    cells = values.reshape(GRID[0], 32, GRID[1], 32).transpose(0, 2, 1, 3).reshape(GRID[0] * GRID[1], -1)
    assert (cells.std(axis=1) > 0).all()
    # ... and no step between neighbouring pixels comes near a jump between neighbouring patches
    step = max(np.abs(np.diff(values, axis=0)).max(), np.abs(np.diff(values, axis=1)).max())
    jump = max(np.abs(np.diff(blocky, axis=0)).max(), np.abs(np.diff(blocky, axis=1)).max())
    assert step < 0.2 * jump


def test_the_interpolated_map_keeps_the_mass_where_it_was() -> None:
    heat = _patch_map(3)
    values = upsample(heat, SIZE)
    pixels_per_patch = values.size / heat.size
    assert values.sum() / pixels_per_patch == pytest.approx(heat.sum(), rel=1e-4)
    blocky = np.kron(heat, np.ones((32, 32), dtype=np.float32))
    for quadrant, share in quadrant_mass(blocky).items():
        assert quadrant_mass(values)[quadrant] == pytest.approx(share, abs=0.03), quadrant
    # the brightest patch stays the brightest place
    peak = np.unravel_index(values.argmax(), values.shape)
    assert (peak[0] // 32, peak[1] // 32) == (2, 5)
    with pytest.raises(ValueError, match="shape"):
        upsample(np.zeros((0, 3)), SIZE)


def test_overlay_returns_its_scale_and_opacity_sets_the_tint() -> None:
    grey = Image.new("L", SIZE, 90)
    heat = _patch_map()
    clear, scale = draw_overlay(grey, heat, colormap="viridis", opacity=0.0)
    assert (np.asarray(clear) == 90).all()  # opacity 0: the view unchanged
    assert scale.colormap == "viridis" and scale.patch_px == (32.0, 32.0)
    assert scale.top == pytest.approx(float(np.percentile(upsample(heat, SIZE), 99)))
    assert scale.hidden_below == pytest.approx(HIDE_BELOW * scale.top)
    faint = np.abs(np.asarray(render_overlay(grey, heat, colormap="viridis", opacity=0.3), dtype=float) - 90).sum()
    strong = np.abs(np.asarray(render_overlay(grey, heat, colormap="viridis", opacity=0.9), dtype=float) - 90).sum()
    assert 0 < faint < strong


def test_colour_bar_has_the_colour_map_and_labelled_scale() -> None:
    scale = ColourScale(colormap="inferno", top=0.0412, patch_px=(32.0, 28.0))
    bar = colour_bar_html(scale)
    ticks = re.findall(r'class="echo-colorbar-tick"[^>]*>([^<]*)<', bar)
    assert ticks == ["0%", "0.824%", "2.06%", "≥ 4.12%"]
    cmap = matplotlib.colormaps["inferno"]
    assert matplotlib.colors.to_hex(cmap(1.0)) in bar and matplotlib.colors.to_hex(cmap(HIDE_BELOW)) in bar
    assert "share of this explanation per image patch" in bar and "32×28 px" in bar
    other = colour_bar_html(ColourScale(colormap="viridis", top=0.0412, patch_px=(32.0, 28.0)))
    assert matplotlib.colors.to_hex(matplotlib.colormaps["viridis"](1.0)) in other and other != bar
    with pytest.raises(ValueError, match="1"):
        colour_bar_html(scale, stops=1)
