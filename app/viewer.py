"""The study viewer: window/level on the original pixel values, presets, invert, views side by side.

Pure display maths (arrays in, 8-bit out) and the viewer's HTML; zoom and pan happen in the browser
(``app/static/viewer.js``), so they cost no server round trip.

Values and windows are in the file's units (after the DICOM Modality LUT: Rescale Slope/Intercept). A view
deeper than 8 bits is windowed from its kept 16-bit originals (``images/<hash>.16.png``); an 8-bit view (PNG,
JPEG, 8-bit DICOM) from its stored 8-bit pixels, where centre 128 / width 256 is the stored image.

Presets. On CT-like data (Modality ``CT``, Hounsfield units) they are the usual HU windows (lung L -600 /
W 1500, mediastinum L 50 / W 350, bone L 300 / W 2000). Radiographs (CR, DX, PNG) have no HU, and their file
windows are often far wider than the data (a CR file may say C 15000 / W 30000 over values 900..26000), so the
presets are placed on the view's own **density percentiles** (values ordered from least to most dense: brighter
on screen; reversed for MONOCHROME1), window = [percentile lo, percentile hi]:

* lung: density percentiles 1..62 stretched over black..white: the lungs get the grey levels, the mediastinum
  and bones go white;
* mediastinum: 35..99.5: soft tissue behind the heart and mediastinum, the lungs go black;
* bone: 5..99.9, a wide window that keeps grey levels in the densest parts (cortex, trabeculae);
* file default: the file's VOI window (the data range where the file has none, or a VOI LUT table).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from echo_model.imaging import decode_original_png
from echo_model.imaging.tone import Window, window_to_uint8

from .store import ImageInfo, StudyInfo

__all__ = [
    "DISPLAY_MAX_SIDE", "HU_PRESETS", "PRESETS", "PRESET_KEYS", "RELATIVE_PRESETS", "VIEWER_JS_PATH", "VIEW_LABELS", "Pane",
    "SliderRange", "StudyView", "ViewPixels", "preset_window", "render_pane", "render_study", "slider_range",
    "view_pixels", "viewer_html", "window_pixels",
]

#: Preset name -> label (the radio's choices, in the order of their keys 0..3).
PRESETS: dict[str, str] = {"default": "File default (0)", "lung": "Lung (1)", "mediastinum": "Mediastinum (2)",
                           "bone": "Bone (3)"}
#: Keyboard key -> preset (dispatched in the browser by app/static/viewer.js).
PRESET_KEYS: dict[str, str] = {"0": "default", "1": "lung", "2": "mediastinum", "3": "bone"}
#: Hounsfield-unit presets (centre, width) for CT-like data.
HU_PRESETS: dict[str, tuple[float, float]] = {"lung": (-600.0, 1500.0), "mediastinum": (50.0, 350.0),
                                              "bone": (300.0, 2000.0)}
#: Radiograph presets: (low, high) density percentiles of the view that the window spans.
RELATIVE_PRESETS: dict[str, tuple[float, float]] = {"lung": (1.0, 62.0), "mediastinum": (35.0, 99.5),
                                                    "bone": (5.0, 99.9)}
#: Every n-th row and column enters the percentiles (a 3000 px CR would otherwise sort 9 M values per click).
PERCENTILE_STRIDE = 4
#: Stored view position -> the label shown on its pane.
VIEW_LABELS: dict[str, str] = {"pa": "PA", "ap": "AP", "lateral": "lateral", "unknown": "position unknown"}
#: Longest side of a displayed view (pixels); larger views are downsampled for the browser (zoom 200 % of a
#: full-width pane still shows every display pixel).
DISPLAY_MAX_SIDE = 2048
#: Zoom, pan and the keyboard shortcuts (the viewer's ``js_on_load``).
VIEWER_JS_PATH = Path(__file__).resolve().parent / "static" / "viewer.js"
HELP_LINE = ("Wheel: zoom · drag: pan · keys (outside text boxes): 1 lung, 2 mediastinum, 3 bone, 0 file default, "
             "i invert, r reset zoom, n / p next / previous study")


@dataclass(frozen=True)
class ViewPixels:
    """One view's displayable values and how to window them by default."""

    values: np.ndarray  # (H, W) float64, file units
    file_window: Window  # the file's VOI window (or the data range)
    inverted: bool  # displayed inverted by default (MONOCHROME1)
    hounsfield: bool  # CT-like data: HU presets apply
    deep: bool  # windowed from kept 16-bit originals (False: the stored 8-bit pixels)


@dataclass(frozen=True)
class SliderRange:
    """Ranges of the Level and Window sliders for one view, in its file units."""

    center_min: float
    center_max: float
    width_max: float
    step: float


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@functools.lru_cache(maxsize=8)
def _stored_original(path: str, mtime_ns: int) -> np.ndarray:
    """The decoded 16-bit originals of a file (cached: every window change re-renders every view)."""
    del mtime_ns  # part of the cache key only
    return decode_original_png(Path(path).read_bytes())


def view_pixels(path: Path, metadata: dict[str, Any], *, original_path: Path | None = None) -> ViewPixels:
    """The values to window for a stored view: its 16-bit originals where kept, else its 8-bit pixels."""
    slope, intercept = _number(metadata.get("original_slope")), _number(metadata.get("original_intercept"))
    if original_path is not None and slope is not None and intercept is not None:
        stored = _stored_original(str(original_path), original_path.stat().st_mtime_ns)
        values = stored.astype(np.float64) * slope + intercept
        center, width = _number(metadata.get("window_center")), _number(metadata.get("window_width"))
        function = str(metadata.get("window_function") or "LINEAR_EXACT")
        try:
            window = Window(center, width, function) if center is not None and width is not None else None
        except ValueError:
            window = None
        if window is None:  # a VOI LUT table, or no window: the data range (robust to a few outliers)
            low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
            window = Window(center=(low + high) / 2.0, width=max(high - low, 1.0), function="LINEAR_EXACT")
        return ViewPixels(values=values, file_window=window, inverted=bool(metadata.get("display_inverted")),
                          hounsfield=str(metadata.get("modality") or "").upper() == "CT", deep=True)
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L"), dtype=np.float64)
    return ViewPixels(values=grey, file_window=Window(128.0, 256.0, "LINEAR"), inverted=False, hounsfield=False,
                      deep=False)


def preset_window(pixels: ViewPixels, preset: str) -> Window:
    """The window of ``preset`` (see the module docstring) for one view."""
    base = pixels.file_window
    if preset == "default":
        return base
    if preset not in RELATIVE_PRESETS:
        raise ValueError(f"unknown window preset {preset!r}; choose one of {list(PRESETS)}")
    if pixels.hounsfield:
        center, width = HU_PRESETS[preset]
        return Window(center, width, base.function)
    return _percentile_window(pixels, *RELATIVE_PRESETS[preset], function=base.function)


def _percentile_window(pixels: ViewPixels, low: float, high: float, *, function: str) -> Window:
    """The window spanning density percentiles ``low``..``high`` of the view (MONOCHROME1: low values dense)."""
    sample = np.asarray(pixels.values, dtype=np.float64)[::PERCENTILE_STRIDE, ::PERCENTILE_STRIDE]  # (h, w)
    if pixels.inverted:  # dense = low values: density percentile q is value percentile 100 - q
        low, high = 100.0 - high, 100.0 - low
    lo, hi = (float(v) for v in np.percentile(sample, [low, high]))
    return Window(center=(lo + hi) / 2.0, width=max(hi - lo, 1.0), function=function)


def window_pixels(values: np.ndarray, window: Window, *, invert: bool = False) -> np.ndarray:
    """(H, W) values -> (H, W) uint8 through ``window``; ``invert`` swaps black and white."""
    grey = window_to_uint8(values, window)
    return 255 - grey if invert else grey


def slider_range(pixels: ViewPixels) -> SliderRange:
    """Slider bounds covering the view's values and every preset window (not a fixed 0..255)."""
    low, high = float(pixels.values.min()), float(pixels.values.max())
    windows = [preset_window(pixels, name) for name in PRESETS]
    span = max(high - low, 1.0)
    center_min = min(low, *(w.center for w in windows))
    center_max = max(high, *(w.center for w in windows))
    width_max = max(2.0 * span, *(w.width for w in windows))
    step = 1.0 if span >= 100 else 10.0 ** math.floor(math.log10(span / 100.0))
    return SliderRange(center_min=math.floor(center_min), center_max=math.ceil(center_max),
                       width_max=math.ceil(width_max), step=step)


@dataclass(frozen=True)
class Pane:
    """One view as the viewer shows it: position, caption, the displayed 8-bit PNG."""

    position: int
    caption: str
    png: bytes
    selected: bool = False


def render_pane(pixels: ViewPixels, window: Window, *, invert: bool, position: int, caption: str,
                selected: bool = False) -> Pane:
    """Window one view (the default display is inverted for MONOCHROME1) into a displayable PNG pane."""
    grey = window_pixels(pixels.values, window, invert=invert != pixels.inverted)
    image = Image.fromarray(grey, mode="L")
    if max(image.size) > DISPLAY_MAX_SIDE:
        image.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return Pane(position=position, caption=caption, png=buffer.getvalue(), selected=selected)


def viewer_html(panes: Sequence[Pane]) -> str:
    """The views side by side with their labels, zoom read-outs, a reset button and the key help."""
    if not panes:
        return '<div class="echo-viewer echo-viewer-empty">No study on screen: upload views above.</div>'
    figures = []
    for pane in panes:
        data = base64.b64encode(pane.png).decode("ascii")
        figures.append(
            f'<figure class="echo-pane{" echo-selected" if pane.selected else ""}" data-position="{pane.position}">'
            f'<figcaption class="echo-caption" title="{html.escape(pane.caption)}">{html.escape(pane.caption)}'
            '</figcaption>'
            f'<div class="echo-stage"><img alt="{html.escape(pane.caption)}" draggable="false" '
            f'src="data:image/png;base64,{data}"></div>'
            f'<div class="echo-zoom">zoom 100 %</div></figure>')
    return ('<div class="echo-viewer">'
            f'<div class="echo-panes" style="--echo-views:{len(panes)}">{"".join(figures)}</div>'
            '<div class="echo-toolbar"><button type="button" class="echo-reset-zoom" id="reset-zoom-btn">'
            f'Reset zoom</button><span class="echo-help">{html.escape(HELP_LINE)}</span></div></div>')


@dataclass(frozen=True)
class StudyView:
    """What the viewer shows of a study: the HTML, and the chosen view's window and slider ranges."""

    html: str
    window: Window
    sliders: SliderRange
    index: int  # of the chosen view in ``study.images``


def _caption(image: ImageInfo, window: Window, *, preset: str, manual: bool, invert: bool) -> str:
    how = "manual" if manual else PRESETS[preset].split(" (")[0].lower()
    bits = [image.label, VIEW_LABELS.get(image.view, image.view), f"L {window.center:g} / W {window.width:g} ({how})"]
    return " · ".join(bits + (["inverted"] if invert else []))


def render_study(study: StudyInfo, *, selected: int | None, preset: str = "default", invert: bool = False,
                 window: tuple[float, float] | None = None) -> StudyView:
    """All views of ``study`` side by side, each under ``preset``; the view at position ``selected`` (default:
    the first) under ``window`` (centre, width in its file units) when given.

    Raises:
        ValueError: an unknown preset, or a window width below 1.
    """
    if not study.images:
        raise ValueError(f"study {study.id!r} has no views")
    positions = [img.position for img in study.images]
    index = positions.index(selected) if selected in positions else 0
    panes, chosen = [], None
    for i, image in enumerate(study.images):
        pixels = view_pixels(image.path, image.metadata, original_path=image.original_path)
        view_window = preset_window(pixels, preset)
        manual = False
        if i == index and window is not None:
            center, width = window
            if not (math.isfinite(center) and math.isfinite(width)) or width < 1:
                raise ValueError(f"a window needs a finite centre and a width >= 1, got centre {center!r}, "
                                 f"width {width!r}")
            manual = not (math.isclose(center, view_window.center, abs_tol=1e-3)
                          and math.isclose(width, view_window.width, abs_tol=1e-3))
            view_window = Window(float(center), float(width), view_window.function)
        if i == index:
            chosen = (pixels, view_window)
        panes.append(render_pane(pixels, view_window, invert=invert, position=image.position, selected=i == index,
                                 caption=_caption(image, view_window, preset=preset, manual=manual, invert=invert)))
    assert chosen is not None
    return StudyView(html=viewer_html(panes), window=chosen[1], sliders=slider_range(chosen[0]), index=index)
