"""Image augmentation for training, and named perturbations for evaluation.

Chest radiographs from another hospital differ from the training set in ways that keep the anatomy but change
the pixels: the window/level chosen at export, the detector's gamma, a 12/16-bit DICOM rescaled to 8 bits by a
different VOI window, contrast and brightness, a slightly different crop and patient tilt, noise, resolution
and JPEG re-compression. This module simulates those, with pure numpy/PIL (a 256x300 image takes a few ms).

* :class:`Augmenter` is what the trainer uses: ``Augmenter(seed=0)(image, key=i)`` draws a random subset of
  the operations from ``(seed, key)`` alone, so a given key always gives the same image.
* :func:`augment_image` does the same from a ``numpy.random.Generator`` (or an int seed).
* :data:`PERTURBATIONS` are fixed, moderate versions of the same operations, for evaluating robustness
  (``echo-eval --perturb NAME``); :func:`perturb` applies one by name.

Every function takes a PIL image of mode ``L``, ``I;16``/``I``/``F`` (16-bit or float, mapped to 8 bits over
the data's own range, as :mod:`echo_model.imaging` maps a PNG or a DICOM without a window) or ``RGB``, and
returns an 8-bit ``L`` image **of exactly the input's size** (the trainer pre-computes patch positions from
the image grid). No operation inverts the image: every grey-level mapping is monotonic non-decreasing.
"""

from __future__ import annotations

import io
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from PIL import Image

from .imaging.tone import Window, data_range_window, window_to_uint8

__all__ = [
    "PERTURBATIONS",
    "AugmentConfig",
    "Augmenter",
    "add_noise",
    "adjust_contrast",
    "adjust_gamma",
    "augment_image",
    "crop_rotate",
    "dicom16_roundtrip",
    "jpeg_recompress",
    "lower_resolution",
    "perturb",
    "window_level",
]

_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_RESAMPLE_UP = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)

Range = tuple[float, float]


# ------------------------------------------------------------------------------------------------- config
def _check_range(name: str, value: Range, *, low: float, high: float, low_open: bool = False) -> None:
    """``value`` must be a pair ``(a, b)`` with ``low <= a <= b <= high`` (``low < a`` when ``low_open``)."""
    if not (isinstance(value, tuple) and len(value) == 2):
        raise ValueError(f"{name} must be a (low, high) pair, got {value!r}")
    a, b = value
    above_low = a > low if low_open else a >= low
    if not (math.isfinite(a) and math.isfinite(b) and above_low and a <= b <= high):
        bound = "(" if low_open else "["
        raise ValueError(f"{name} must satisfy low <= high within {bound}{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of :func:`augment_image`; each ``p_*`` is drawn independently per image.

    Ranges are ``(low, high)`` pairs sampled uniformly (gamma and the downsampling factor log-uniformly).
    Window fractions are of the image's data range (its min..max), so they mean the same for 8- and 16-bit
    input.
    """

    p_window: float = 0.25
    window_width: Range = (0.55, 1.0)  # window width as a fraction of the data range
    window_center_shift: float = 0.15  # window centre = middle of the range +- this fraction of it
    p_dicom16: float = 0.2
    dicom_bits: tuple[int, ...] = (12, 16)  # bits stored in the simulated DICOM
    dicom_slope: Range = (0.5, 4.0)  # Rescale Slope (always > 0: a negative one would invert)
    dicom_intercept: Range = (-1024.0, 1024.0)  # Rescale Intercept
    dicom_window_margin: float = (
        0.15  # the file's window ends lie this fraction inside/outside the data range
    )
    dicom_sigmoid: float = 0.25  # probability that the file's VOI LUT function is SIGMOID (else LINEAR)
    p_gamma: float = 0.4
    gamma: Range = (0.7, 1.5)
    p_contrast: float = 0.4
    contrast: Range = (0.7, 1.3)  # slope of the grey mapping around the image mean (> 0: never inverts)
    brightness: Range = (-0.08, 0.08)  # offset as a fraction of 255
    p_crop_rotate: float = 0.5
    crop_area: Range = (0.85, 1.0)  # share of the image area kept before resizing back
    rotation_deg: float = 5.0  # rotation drawn from +-this many degrees
    p_noise: float = 0.25
    noise_sigma: Range = (1.0, 6.0)  # Gaussian noise, in 8-bit grey levels
    p_low_resolution: float = 0.25
    downsample: Range = (1.5, 4.0)  # downsampling factor before upsampling back
    p_jpeg: float = 0.2
    jpeg_quality: tuple[int, int] = (40, 90)

    def __post_init__(self) -> None:
        """Refuse probabilities outside [0, 1] and ranges that are reversed or out of bounds."""
        for name in (
            "p_window",
            "p_dicom16",
            "p_gamma",
            "p_contrast",
            "p_crop_rotate",
            "p_noise",
            "p_low_resolution",
            "p_jpeg",
            "dicom_sigmoid",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        _check_range("window_width", self.window_width, low=0.0, high=4.0, low_open=True)
        if not 0.0 <= self.window_center_shift <= 1.0:
            raise ValueError(f"window_center_shift must be in [0, 1], got {self.window_center_shift!r}")
        if not self.dicom_bits or any(not isinstance(b, int) or not 9 <= b <= 16 for b in self.dicom_bits):
            raise ValueError(
                f"dicom_bits must be a non-empty tuple of ints in 9..16, got {self.dicom_bits!r}"
            )
        _check_range("dicom_slope", self.dicom_slope, low=0.0, high=1e3, low_open=True)
        _check_range("dicom_intercept", self.dicom_intercept, low=-1e5, high=1e5)
        if not 0.0 <= self.dicom_window_margin < 0.5:
            raise ValueError(f"dicom_window_margin must be in [0, 0.5), got {self.dicom_window_margin!r}")
        _check_range("gamma", self.gamma, low=0.0, high=10.0, low_open=True)
        _check_range("contrast", self.contrast, low=0.0, high=10.0, low_open=True)
        _check_range("brightness", self.brightness, low=-1.0, high=1.0)
        _check_range("crop_area", self.crop_area, low=0.0, high=1.0, low_open=True)
        if not 0.0 <= self.rotation_deg <= 45.0:
            raise ValueError(f"rotation_deg must be in [0, 45], got {self.rotation_deg!r}")
        _check_range("noise_sigma", self.noise_sigma, low=0.0, high=128.0)
        _check_range("downsample", self.downsample, low=1.0, high=32.0)
        q = self.jpeg_quality
        if not (
            isinstance(q, tuple)
            and len(q) == 2
            and all(isinstance(v, int) for v in q)
            and 1 <= q[0] <= q[1] <= 95
        ):
            raise ValueError(f"jpeg_quality must be an int pair 1 <= low <= high <= 95, got {q!r}")


# ------------------------------------------------------------------------------------------ conversions
def _native_values(image: Image.Image) -> np.ndarray:
    """Grey values in the image's own scale: 0..255 for 8-bit and RGB, the stored values for 16-bit/float."""
    if image.mode in _HIGH_DEPTH_MODES:
        return np.asarray(image, dtype=np.float64)
    return np.asarray(image if image.mode == "L" else image.convert("L"), dtype=np.float64)


def _grey8(image: Image.Image) -> np.ndarray:
    """Float 0..255 values; 16-bit/float input is stretched over its data range as the image loader does."""
    values = _native_values(image)
    if image.mode in _HIGH_DEPTH_MODES:
        return window_to_uint8(values, data_range_window(values)).astype(np.float64)
    return values


def _to_image(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def _range_window(
    values: np.ndarray, *, center: float, width: float, function: str = "LINEAR_EXACT"
) -> Window:
    """A window placed by fractions of the data range (``center`` 0.5, ``width`` 1 = the whole range)."""
    low, high = float(values.min()), float(values.max())
    span = max(high - low, 1.0)
    return Window(center=low + center * span, width=max(width * span, 1e-6), function=function)


# ------------------------------------------------------------------------------------- the operations
def _window(values: np.ndarray, *, center: float, width: float) -> np.ndarray:
    return window_to_uint8(values, _range_window(values, center=center, width=width)).astype(np.float64)


def _dicom16(
    grey: np.ndarray,
    *,
    bits: int,
    slope: float,
    intercept: float,
    window_low: float,
    window_high: float,
    function: str = "LINEAR",
) -> np.ndarray:
    """Expand to ``bits`` stored bits, apply a Rescale Slope/Intercept (modality LUT) and the file's window.

    The window is given by where its ends fall in the data range (0 = darkest pixel, 1 = brightest): inside it
    clips and stretches, outside it leaves the image low-contrast, as a hospital's export window does. The
    8-bit image is then rendered with the VOI maths of :mod:`echo_model.imaging` (``window_to_uint8``).
    """
    max_stored = 2**bits - 1
    stored = np.rint(grey / 255.0 * max_stored)
    values = stored * slope + intercept
    lo, hi = float(values.min()), float(values.max())
    span = max(hi - lo, 1.0)
    w_lo, w_hi = lo + window_low * span, lo + window_high * span
    window = Window(center=(w_lo + w_hi) / 2.0, width=max(w_hi - w_lo, 1.0), function=function)
    return window_to_uint8(values, window).astype(np.float64)


def _gamma(grey: np.ndarray, gamma: float) -> np.ndarray:
    return 255.0 * np.power(np.clip(grey, 0.0, 255.0) / 255.0, gamma)


def _contrast(grey: np.ndarray, *, contrast: float, brightness: float) -> np.ndarray:
    mean = float(grey.mean())
    return np.clip((grey - mean) * contrast + mean + 255.0 * brightness, 0.0, 255.0)


def _crop_rotate(grey: np.ndarray, *, area: float, angle: float, offset: tuple[float, float]) -> np.ndarray:
    """Keep a centred-plus-``offset`` box of ``area`` of the image rotated by ``angle`` degrees, resized back.

    One affine resampling (bilinear); pixels that come from outside the image take the mean of its border,
    which for a radiograph is the dark surround, never a white frame.
    """
    h, w = grey.shape
    scale = math.sqrt(area)
    # the crop centre may move by up to the slack the crop leaves (offset in [-1, 1] of it)
    cx = w / 2.0 + offset[0] * (1.0 - scale) * w / 2.0
    cy = h / 2.0 + offset[1] * (1.0 - scale) * h / 2.0
    theta = math.radians(angle)
    a, b = scale * math.cos(theta), -scale * math.sin(theta)
    d, e = scale * math.sin(theta), scale * math.cos(theta)
    # output pixel (x, y) samples input (a x + b y + c, d x + e y + f): centre to crop centre, scaled, rotated
    c = cx - a * w / 2.0 - b * h / 2.0
    f = cy - d * w / 2.0 - e * h / 2.0
    border = float(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]]).mean())
    src = Image.fromarray(grey.astype(np.float32), mode="F")
    out = src.transform(
        (w, h),
        Image.Transform.AFFINE,
        (a, b, c, d, e, f),
        resample=Image.Resampling.BILINEAR,
        fillcolor=border,
    )
    return np.asarray(out, dtype=np.float64)


def _noise(grey: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(grey + rng.normal(0.0, sigma, size=grey.shape), 0.0, 255.0)


def _low_resolution(grey: np.ndarray, factor: float, *, upsample: Image.Resampling) -> np.ndarray:
    h, w = grey.shape
    small = (max(1, round(w / factor)), max(1, round(h / factor)))
    src = Image.fromarray(grey.astype(np.float32), mode="F")
    back = src.resize(small, Image.Resampling.BOX).resize((w, h), upsample)
    return np.clip(np.asarray(back, dtype=np.float64), 0.0, 255.0)


def _jpeg(grey: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    _to_image(grey).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L"), dtype=np.float64)


# --------------------------------------------------------------------------- public single operations
def window_level(image: Image.Image, *, center: float = 0.5, width: float = 0.6) -> Image.Image:
    """Re-window: ``center``/``width`` are fractions of the data range; values outside the window clip.

    For 16-bit input the window is applied to the stored values (as a DICOM viewer would), not to 8 bits.
    """
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width!r}")
    return _to_image(_window(_native_values(image), center=center, width=width))


def dicom16_roundtrip(
    image: Image.Image,
    *,
    bits: int = 12,
    slope: float = 2.0,
    intercept: float = -1024.0,
    window_low: float = 0.08,
    window_high: float = 0.92,
    function: str = "LINEAR",
) -> Image.Image:
    """Simulate a 12/16-bit DICOM rescaled and windowed back to 8 bits (see :func:`_dicom16`).

    ``window_low``/``window_high`` place the file's window in the data range (0..1; outside it is allowed),
    ``function`` is the VOI LUT function (``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``).
    """
    if not 9 <= bits <= 16:
        raise ValueError(f"bits must be in 9..16, got {bits!r}")
    if not slope > 0:
        raise ValueError(f"slope must be > 0 (a negative slope inverts the image), got {slope!r}")
    if not window_high > window_low:
        raise ValueError(f"window_high must exceed window_low, got {window_low!r}..{window_high!r}")
    return _to_image(
        _dicom16(
            _grey8(image),
            bits=bits,
            slope=slope,
            intercept=intercept,
            window_low=window_low,
            window_high=window_high,
            function=function,
        )
    )


def adjust_gamma(image: Image.Image, gamma: float) -> Image.Image:
    """``255 * (x / 255) ** gamma``: below 1 brightens the mid-tones, above 1 darkens them."""
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    return _to_image(_gamma(_grey8(image), gamma))


def adjust_contrast(image: Image.Image, *, contrast: float = 1.0, brightness: float = 0.0) -> Image.Image:
    """Scale grey levels around the mean by ``contrast`` (> 0: never inverted); add 255 * ``brightness``."""
    if not contrast > 0:
        raise ValueError(f"contrast must be > 0 (a negative one would invert the image), got {contrast!r}")
    return _to_image(_contrast(_grey8(image), contrast=contrast, brightness=brightness))


def crop_rotate(
    image: Image.Image, *, area: float = 0.9, angle: float = 0.0, offset: tuple[float, float] = (0.0, 0.0)
) -> Image.Image:
    """Crop ``area`` (0..1] of the image, rotate by ``angle`` degrees, resize back to the same size.

    ``offset`` moves the crop centre, in [-1, 1] of the slack the crop leaves on each axis.
    """
    if not 0.0 < area <= 1.0:
        raise ValueError(f"area must be in (0, 1], got {area!r}")
    return _to_image(_crop_rotate(_grey8(image), area=area, angle=angle, offset=offset))


def add_noise(image: Image.Image, sigma: float, *, rng: np.random.Generator | int = 0) -> Image.Image:
    """Add Gaussian noise of ``sigma`` grey levels, drawn from ``rng`` (a Generator or a seed)."""
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    return _to_image(_noise(_grey8(image), sigma, np.random.default_rng(rng)))


def lower_resolution(image: Image.Image, factor: float) -> Image.Image:
    """Downsample by ``factor`` (box filter) and upsample back (bilinear) to the same size."""
    if not factor >= 1.0:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    return _to_image(_low_resolution(_grey8(image), factor, upsample=Image.Resampling.BILINEAR))


def jpeg_recompress(image: Image.Image, quality: int) -> Image.Image:
    """Encode as JPEG at ``quality`` (1..95) and decode again."""
    if not 1 <= quality <= 95:
        raise ValueError(f"quality must be in 1..95, got {quality!r}")
    return _to_image(_jpeg(_grey8(image), quality))


# ---------------------------------------------------------------------------------------- augmentation
def _log_uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def augment_image(
    image: Image.Image, rng: np.random.Generator | int, config: AugmentConfig = AugmentConfig()
) -> Image.Image:
    """Apply a random subset of the operations, each with its ``config.p_*`` probability.

    Order (acquisition to export): window/level on the native values (else the loader's 8-bit mapping), crop
    and rotation, lower resolution, noise, 16-bit DICOM round trip, gamma, contrast/brightness, JPEG. Every
    draw is made whether or not the operation is applied, so one probability does not shift the others'
    randomness.

    Args:
        image: ``L``, ``I;16``/``I``/``F`` or ``RGB``.
        rng: a ``numpy.random.Generator`` (advanced) or an int seed.
        config: probabilities and ranges.

    Returns:
        An 8-bit ``L`` image of the input's size.
    """
    rng = np.random.default_rng(rng)
    cfg = config
    use = {
        name: bool(rng.random() < getattr(cfg, f"p_{name}"))
        for name in (
            "window",
            "crop_rotate",
            "low_resolution",
            "noise",
            "dicom16",
            "gamma",
            "contrast",
            "jpeg",
        )
    }
    window = {
        "center": 0.5 + rng.uniform(-cfg.window_center_shift, cfg.window_center_shift),
        "width": rng.uniform(*cfg.window_width),
    }
    geometry = {
        "area": rng.uniform(*cfg.crop_area),
        "angle": rng.uniform(-cfg.rotation_deg, cfg.rotation_deg),
        "offset": (rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)),
    }
    factor = _log_uniform(rng, cfg.downsample)
    upsample = _RESAMPLE_UP[int(rng.integers(len(_RESAMPLE_UP)))]
    sigma = rng.uniform(*cfg.noise_sigma)
    noise_seed = int(rng.integers(2**63))
    m = cfg.dicom_window_margin
    dicom = {
        "bits": int(rng.choice(cfg.dicom_bits)),
        "slope": rng.uniform(*cfg.dicom_slope),
        "intercept": rng.uniform(*cfg.dicom_intercept),
        "window_low": rng.uniform(-m, m),
        "window_high": rng.uniform(1.0 - m, 1.0 + m),
        "function": "SIGMOID" if rng.random() < cfg.dicom_sigmoid else "LINEAR",
    }
    gamma = _log_uniform(rng, cfg.gamma)
    contrast = {"contrast": rng.uniform(*cfg.contrast), "brightness": rng.uniform(*cfg.brightness)}
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))

    grey = _window(_native_values(image), **window) if use["window"] else _grey8(image)
    if use["crop_rotate"]:
        grey = _crop_rotate(grey, **geometry)
    if use["low_resolution"]:
        grey = _low_resolution(grey, factor, upsample=upsample)
    if use["noise"]:
        grey = _noise(grey, sigma, np.random.default_rng(noise_seed))
    if use["dicom16"]:
        grey = _dicom16(grey, **dicom)
    if use["gamma"]:
        grey = _gamma(grey, gamma)
    if use["contrast"]:
        grey = _contrast(grey, **contrast)
    if use["jpeg"]:
        grey = _jpeg(grey, quality)
    return _to_image(grey)


@dataclass(frozen=True)
class Augmenter:
    """Deterministic per-example augmentation: ``Augmenter(seed=0)(image, key=i)``.

    The draw depends on ``(seed, key)`` only, so workers and restarts reproduce it. The same key gives the
    same image every time: pass a key that changes with the epoch (e.g. ``epoch * n_examples + index``) for
    fresh augmentations each epoch. Negative ints are allowed (taken modulo 2**64).
    """

    seed: int = 0
    config: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        """Refuse a seed that is not an int (a float seed would silently truncate)."""
        try:
            operator.index(self.seed)
        except TypeError:
            raise ValueError(f"seed must be an int, got {self.seed!r}") from None

    def __call__(self, image: Image.Image, key: int) -> Image.Image:
        """The augmented image for ``key`` (an int; the same key always gives the same image)."""
        try:
            key = operator.index(key)
        except TypeError:
            raise ValueError(f"key must be an int, got {key!r}") from None
        sequence = np.random.SeedSequence([operator.index(self.seed) % 2**64, key % 2**64])
        return augment_image(image, np.random.default_rng(sequence), self.config)


# ------------------------------------------------------------------------------------------ perturbations
PERTURBATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "window_narrow": partial(window_level, center=0.5, width=0.6),
    "gamma_0.7": partial(adjust_gamma, gamma=0.7),
    "gamma_1.4": partial(adjust_gamma, gamma=1.4),
    "dicom16": partial(
        dicom16_roundtrip,
        bits=12,
        slope=2.0,
        intercept=-1024.0,
        window_low=0.08,
        window_high=0.92,
        function="LINEAR",
    ),
    "dicom16_sigmoid": partial(
        dicom16_roundtrip,
        bits=16,
        slope=1.0,
        intercept=0.0,
        window_low=0.0,
        window_high=1.0,
        function="SIGMOID",
    ),
    "contrast_low": partial(adjust_contrast, contrast=0.6, brightness=0.0),
    "crop_rotate": partial(crop_rotate, area=0.88, angle=4.0),
    "noise": partial(add_noise, sigma=8.0, rng=0),
    "low_resolution": partial(lower_resolution, factor=3.0),
    "jpeg": partial(jpeg_recompress, quality=40),
}
"""Fixed, moderate perturbations for evaluation (``echo-eval --perturb NAME``), all deterministic:

* ``window_narrow``: window centred on the data range, 60 % of its width (both ends clip);
* ``gamma_0.7`` / ``gamma_1.4``: gamma 0.7 (brighter mid-tones) / 1.4 (darker mid-tones);
* ``dicom16``: 12-bit stored values, Rescale Slope 2 / Intercept -1024, LINEAR window over 8-92 % of the data;
* ``dicom16_sigmoid``: 16-bit, identity rescale, SIGMOID VOI window over the data range (flattened ends);
* ``contrast_low``: contrast 0.6 around the image mean (never inverted);
* ``crop_rotate``: keep the central 88 % of the area, rotate 4 degrees, resize back (border-mean fill);
* ``noise``: Gaussian noise, sigma 8 grey levels, seed 0;
* ``low_resolution``: downsample 3x (box) and upsample back (bilinear);
* ``jpeg``: JPEG re-compression at quality 40.
"""


def perturb(image: Image.Image, name: str) -> Image.Image:
    """Apply the named :data:`PERTURBATIONS` entry; an unknown name raises ValueError naming valid ones."""
    try:
        op = PERTURBATIONS[name]
    except KeyError:
        raise ValueError(f"unknown perturbation {name!r}; choose one of {sorted(PERTURBATIONS)}") from None
    return op(image)
