"""echo_model.augment on tiny synthetic images: size, determinism, monotone tone, geometry, perturbations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from echo_model.augment import (
    PERTURBATIONS,
    AugmentConfig,
    Augmenter,
    add_noise,
    adjust_contrast,
    adjust_gamma,
    augment_image,
    crop_rotate,
    dicom16_roundtrip,
    jpeg_recompress,
    lower_resolution,
    perturb,
    window_level,
)
from echo_model.imaging.tone import data_range_window, window_to_uint8

SIZE = (40, 32)  # PIL (width, height): not square, so a transposed size would show

ALL_ON = AugmentConfig(**{f.name: 1.0 for f in dataclasses.fields(AugmentConfig) if f.name.startswith("p_")})


def _cxr8(seed: int = 0) -> Image.Image:
    """A radiograph-like grey image: dark lungs, bright mediastinum, seeded noise."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    body = 180 - 90 * np.exp(-(((xx - w * 0.3) / (w * 0.15)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2))
    body -= 90 * np.exp(-(((xx - w * 0.7) / (w * 0.15)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2))
    return Image.fromarray(np.clip(body + rng.normal(0, 10, (h, w)), 0, 255).astype(np.uint8), mode="L")


def _cxr16() -> Image.Image:
    """The same picture as 12-bit values in a 16-bit container (mode I;16)."""
    values = np.asarray(_cxr8(), dtype=np.uint16) * 16 + 40
    return Image.fromarray(values)


def _inputs() -> dict[str, Image.Image]:
    return {
        "L": _cxr8(),
        "I;16": _cxr16(),
        "I": _cxr16().convert("I"),
        "RGB": _cxr8().convert("RGB"),
    }


OPS = {
    "window_level": lambda im: window_level(im, center=0.55, width=0.5),
    "dicom16": lambda im: dicom16_roundtrip(im, bits=16, slope=3.0, intercept=-500.0),
    "dicom16_sigmoid": lambda im: dicom16_roundtrip(im, function="SIGMOID"),
    "gamma": lambda im: adjust_gamma(im, 1.4),
    "contrast": lambda im: adjust_contrast(im, contrast=0.7, brightness=0.05),
    "crop_rotate": lambda im: crop_rotate(im, area=0.85, angle=-5.0, offset=(1.0, -1.0)),
    "noise": lambda im: add_noise(im, 5.0, rng=1),
    "low_resolution": lambda im: lower_resolution(im, 4.0),
    "jpeg": lambda im: jpeg_recompress(im, 40),
    "augment": lambda im: augment_image(im, 3, ALL_ON),
}


def _arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


@pytest.mark.parametrize("mode", ["L", "I;16", "I", "RGB"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_keeps_the_size_and_returns_8_bit_grey(op, mode):
    image = _inputs()[mode]
    assert image.mode == mode
    out = OPS[op](image)
    assert out.size == SIZE and out.mode == "L"


def test_16_bit_input_is_read_as_the_image_loader_reads_it():
    """16-bit values are stretched over their data range first, as echo_model.imaging loads a 16-bit PNG."""
    deep = _cxr16()
    values = np.asarray(deep)
    loaded = Image.fromarray(window_to_uint8(values, data_range_window(values)), mode="L")
    for name in ("gamma_0.7", "contrast_low", "window_narrow", "dicom16"):
        diff = np.abs(_arr(perturb(deep, name)) - _arr(perturb(loaded, name)))
        assert diff.mean() < 1.0, name


def test_augmenter_is_deterministic_per_key_and_varies_across_keys():
    image = _cxr8()
    augmenter = Augmenter(seed=0, config=ALL_ON)
    first = [_arr(augmenter(image, key=k)) for k in range(4)]
    again = [_arr(Augmenter(seed=0, config=ALL_ON)(image, key=k)) for k in range(4)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(first[0], other) for other in first[1:])
    assert not np.array_equal(first[0], _arr(Augmenter(seed=1, config=ALL_ON)(image, key=0)))
    # the default config applies a random subset, still reproducibly
    default = Augmenter(seed=7)
    np.testing.assert_array_equal(_arr(default(image, key=-3)), _arr(default(image, key=-3)))


def test_augment_image_takes_a_generator_or_a_seed():
    image = _cxr8()
    a = augment_image(image, np.random.default_rng(5), ALL_ON)
    b = augment_image(image, 5, ALL_ON)
    np.testing.assert_array_equal(_arr(a), _arr(b))


def test_some_keys_are_left_unchanged_and_most_are_not():
    """Each op fires with its probability: over many keys both outcomes occur."""
    image = _cxr8()
    augmenter = Augmenter(seed=0)
    changed = [not np.array_equal(_arr(augmenter(image, key=k)), _arr(image)) for k in range(40)]
    assert 20 <= sum(changed) < 40


def test_tone_ops_never_invert_a_gradient():
    ramp = np.tile(np.linspace(0, 255, SIZE[0]), (SIZE[1], 1))
    gradient = Image.fromarray(ramp.astype(np.uint8), mode="L")
    tone_only = AugmentConfig(p_crop_rotate=0.0, p_noise=0.0, p_low_resolution=0.0, p_jpeg=0.0,
                              p_window=1.0, p_dicom16=1.0, p_gamma=1.0, p_contrast=1.0)
    for key in range(10):
        out = _arr(Augmenter(seed=0, config=tone_only)(gradient, key=key))[0]
        assert np.all(np.diff(out) >= 0), key  # monotonic along the ramp
        assert np.corrcoef(out, ramp[0])[0, 1] > 0.9
    for name in PERTURBATIONS:
        out = _arr(perturb(gradient, name))
        assert np.corrcoef(out.ravel(), ramp.ravel())[0, 1] > 0.8, name


def _bright(values: np.ndarray) -> np.ndarray:
    return np.where(values > 128, values, 0.0)


def _centroid(values: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0 : values.shape[0], 0 : values.shape[1]]
    return np.array([(xx * values).sum(), (yy * values).sum()]) / values.sum()


def test_rotation_is_small_and_fills_with_the_border_mean():
    w, h = SIZE
    square = np.full((h, w), 10.0)
    square[12:20, 16:24] = 250.0
    image = Image.fromarray(square.astype(np.uint8), mode="L")
    out = _arr(crop_rotate(image, area=1.0, angle=5.0))
    assert np.linalg.norm(_centroid(_bright(out)) - _centroid(_bright(square))) < 1.0
    # corners come from outside the image: border mean (dark), never a white frame
    assert out.max() <= 250 and out[0, 0] < 30 and out[-1, -1] < 30
    # the augmenter's geometry (crop 85-100 %, +-5 degrees) keeps the square near its place
    geo = AugmentConfig(p_window=0, p_dicom16=0, p_gamma=0, p_contrast=0, p_noise=0, p_low_resolution=0,
                        p_jpeg=0, p_crop_rotate=1.0)
    for key in range(5):
        moved = _arr(Augmenter(seed=0, config=geo)(image, key=key))
        assert np.linalg.norm(_centroid(_bright(moved)) - _centroid(_bright(square))) < 3.0


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_every_perturbation_keeps_the_size_changes_pixels_and_is_deterministic(name):
    image = _cxr8()
    out = perturb(image, name)
    assert out.size == SIZE and out.mode == "L"
    assert not np.array_equal(_arr(out), _arr(image))
    np.testing.assert_array_equal(_arr(out), _arr(perturb(image, name)))
    assert perturb(_cxr16(), name).size == SIZE


def test_unknown_perturbation_names_the_valid_ones():
    with pytest.raises(ValueError, match="blur.*gamma_0.7"):
        perturb(_cxr8(), "blur")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("p_gamma", 1.5),
        ("p_noise", -0.1),
        ("gamma", (1.5, 0.7)),
        ("gamma", (0.0, 1.0)),
        ("contrast", (-1.0, 1.0)),
        ("crop_area", (0.5, 1.2)),
        ("rotation_deg", 90.0),
        ("downsample", (0.5, 2.0)),
        ("jpeg_quality", (40, 100)),
        ("dicom_bits", (8,)),
        ("dicom_slope", (-1.0, 1.0)),
        ("window_width", (0.0, 1.0)),
    ],
)
def test_bad_config_values_raise_and_show_the_value(field, value):
    with pytest.raises(ValueError, match=field) as info:
        AugmentConfig(**{field: value})
    assert repr(value) in str(info.value)


def test_bad_op_arguments_raise_and_show_the_value():
    image = _cxr8()
    for call, shown in [
        (lambda: adjust_gamma(image, -0.5), "-0.5"),
        (lambda: adjust_contrast(image, contrast=-1.0), "-1.0"),
        (lambda: crop_rotate(image, area=1.5), "1.5"),
        (lambda: dicom16_roundtrip(image, slope=-2.0), "-2.0"),
        (lambda: lower_resolution(image, 0.5), "0.5"),
        (lambda: jpeg_recompress(image, 0), "0"),
        (lambda: Augmenter(seed=1.5), "1.5"),
        (lambda: Augmenter()(image, key="a"), "'a'"),
    ]:
        with pytest.raises(ValueError, match=shown):
            call()
