"""DICOM path of the image-input layer: pydicom 3 decoding, windowing, gating, refusals."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileDataset
from pydicom.pixels import get_decoder

from echo_model.imaging import (
    CXR_LIKENESS_THRESHOLD,
    CorruptImageError,
    ImageInputError,
    ImageLimits,
    ImageTooLargeError,
    LoadedImage,
    NoPixelDataError,
    UnsupportedTransferSyntaxError,
    load_image,
)
from echo_model.imaging.dicom import install_hint
from echo_model.imaging.synthetic import dicom_bytes, phantom_cxr_array, synthetic_dicom_dataset


def _phantom12(seed: int = 0) -> np.ndarray:
    return phantom_cxr_array((240, 256), seed=seed, dtype="uint16")


def _load(ds: FileDataset, *, limits: ImageLimits | None = None) -> LoadedImage:
    if limits is None:
        return load_image(dicom_bytes(ds), name="view.dcm")
    return load_image(dicom_bytes(ds), name="view.dcm", limits=limits)


# --- real radiograph from pydicom-data --------------------------------------------------------


@pytest.fixture(scope="module")
def rg1_path() -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("RG1_UNCR.dcm is not installed (pip install pydicom-data)")
    return str(path)


@pytest.fixture(scope="module")
def rg1(rg1_path: str) -> LoadedImage:
    return load_image(rg1_path)


def test_real_cr_chest_radiograph_loads_with_its_own_window(rg1: LoadedImage) -> None:
    loaded = rg1
    assert loaded.name == "RG1_UNCR.dcm"
    assert loaded.image.mode == "L"
    assert loaded.size == (1841, 1955)
    assert loaded.metadata["modality"] == "CR"
    assert loaded.metadata["view_position"] == "PA"
    assert loaded.metadata["photometric_interpretation"] == "MONOCHROME1"
    assert loaded.metadata["bits_stored"] == 15
    assert (loaded.metadata["window_center"], loaded.metadata["window_width"]) == (15000.0, 30000.0)
    assert loaded.metadata["window_source"] == "dicom"
    assert loaded.warnings == ()
    assert loaded.cxr_likeness >= CXR_LIKENESS_THRESHOLD


def test_real_cr_matches_pydicom_windowing_inverted(rg1_path: str, rg1: LoadedImage) -> None:
    """Independent rendering with pydicom's own apply_voi_lut, then MONOCHROME1 inversion."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(rg1_path)
    windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)  # 0 .. 2**15 - 1
    expected = 255 - np.rint(windowed / (2**15 - 1) * 255).astype(np.int16)
    ours = np.asarray(rg1.image, dtype=np.int16)
    assert np.abs(ours - expected).max() <= 1


def test_real_cr_has_bright_mediastinum_and_dark_lungs(rg1: LoadedImage) -> None:
    """MONOCHROME1 must be inverted: bone/mediastinum bright, aerated lungs dark."""
    arr = np.asarray(rg1.image, dtype=np.float64)
    h, w = arr.shape
    rows = slice(int(0.25 * h), int(0.6 * h))
    mediastinum = arr[rows, int(0.46 * w) : int(0.54 * w)].mean()
    lungs = np.r_[
        arr[rows, int(0.2 * w) : int(0.35 * w)].ravel(), arr[rows, int(0.65 * w) : int(0.8 * w)].ravel()
    ]
    assert mediastinum > lungs.mean() + 20


# --- photometric interpretation and windowing -------------------------------------------------


@pytest.mark.parametrize(
    ("window", "dtype", "bits"),
    [
        ({"WindowCenter": 2048, "WindowWidth": 4096}, "uint16", 12),
        ({"WindowCenter": 1500, "WindowWidth": 800, "VOILUTFunction": "SIGMOID"}, "uint16", 12),
        ({}, "uint16", 12),  # no window: data range
        ({}, "uint8", 8),  # no window, 8 bit: identity
    ],
    ids=["window", "sigmoid", "data-range", "8bit-identity"],
)
def test_monochrome1_renders_as_exact_inverse_of_monochrome2(
    window: dict[str, object], dtype: str, bits: int
) -> None:
    pixels = phantom_cxr_array((200, 230), dtype=dtype)
    mono2 = _load(
        synthetic_dicom_dataset(pixels, photometric="MONOCHROME2", bits_stored=bits, attributes=window)
    )
    mono1 = _load(
        synthetic_dicom_dataset(pixels, photometric="MONOCHROME1", bits_stored=bits, attributes=window)
    )
    inverted = 255 - np.asarray(mono2.image, dtype=np.int16)
    assert np.array_equal(np.asarray(mono1.image, dtype=np.int16), inverted)
    assert np.asarray(mono2.image).std() > 10  # not a degenerate all-black rendering


def test_presentation_lut_shape_inverse_inverts_monochrome2() -> None:
    pixels = _phantom12()
    plain = _load(synthetic_dicom_dataset(pixels, bits_stored=12))
    inverse = _load(
        synthetic_dicom_dataset(pixels, bits_stored=12, attributes={"PresentationLUTShape": "INVERSE"})
    )
    assert np.array_equal(np.asarray(inverse.image), 255 - np.asarray(plain.image))


def test_linear_window_maps_centre_to_mid_grey_and_clips_outside() -> None:
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (64, 1))  # 64 x 256, values 0..4080
    ds = synthetic_dicom_dataset(ramp, bits_stored=12, attributes={"WindowCenter": 1024, "WindowWidth": 512})
    out = np.asarray(_load(ds).image)[0].astype(int)
    values = ramp[0].astype(float)
    assert (out[values <= 768 - 1] == 0).all()
    assert (out[values >= 1280] == 255).all()
    assert abs(out[values == 1024][0] - 128) <= 1
    assert (np.diff(out) >= 0).all()


def test_first_of_several_windows_is_used_and_reported() -> None:
    ds = synthetic_dicom_dataset(
        _phantom12(), bits_stored=12, attributes={"WindowCenter": [1000, 2000], "WindowWidth": [500, 3000]}
    )
    loaded = _load(ds)
    assert (loaded.metadata["window_center"], loaded.metadata["window_width"]) == (1000.0, 500.0)


def test_invalid_window_falls_back_to_data_range_with_warning() -> None:
    ds = synthetic_dicom_dataset(
        _phantom12(), bits_stored=12, attributes={"WindowCenter": 100, "WindowWidth": 0}
    )
    loaded = _load(ds)
    assert loaded.metadata["window_source"] == "data_range"
    assert any("window" in w and "invalid" in w for w in loaded.warnings)


def test_rescale_slope_intercept_applied_before_window() -> None:
    """Stored 0..4095 with slope 2, intercept -1000 -> -1000..7190; window in output units."""
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (40, 1))
    attrs = {"RescaleSlope": 2, "RescaleIntercept": -1000, "WindowCenter": 3000, "WindowWidth": 2000}
    out = np.asarray(_load(synthetic_dicom_dataset(ramp, bits_stored=12, attributes=attrs)).image)[0].astype(
        int
    )
    rescaled = ramp[0] * 2.0 - 1000
    assert (out[rescaled < 2000] == 0).all()
    assert (out[rescaled > 4000] == 255).all()
    assert 100 < out[np.argmin(np.abs(rescaled - 3000))] < 155


def test_voi_lut_sequence_is_preferred_over_window() -> None:
    from pydicom.sequence import Sequence

    ramp = np.tile(np.arange(0, 256, dtype=np.uint16) * 16, (40, 1))  # 0..4080 in 12 bits
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    inverting = (4095 - np.arange(4096)).astype("<u2")  # impossible to express as a window
    item.add_new(0x00283006, "OW", inverting.tobytes())  # LUT Data
    ds = synthetic_dicom_dataset(ramp, bits_stored=12, attributes={"WindowCenter": 2048, "WindowWidth": 4096})
    ds.VOILUTSequence = Sequence([item])
    loaded = _load(ds)
    out = np.asarray(loaded.image)[0].astype(int)
    assert loaded.metadata["window_source"] == "voi_lut"
    assert out[0] == 255 and out[-1] <= 1
    assert (np.diff(out) <= 0).all()


def test_signed_pixel_data_is_windowed() -> None:
    values = (phantom_cxr_array((200, 220), dtype="uint16").astype(np.int16) - 2048).astype(np.int16)
    ds = synthetic_dicom_dataset(values, bits_stored=12, attributes={"WindowCenter": 0, "WindowWidth": 4096})
    arr = np.asarray(_load(ds).image)
    assert arr.min() < 30 and arr.max() > 170


def test_sixteen_bit_without_window_uses_data_range() -> None:
    pixels = (phantom_cxr_array((200, 220), dtype="uint16").astype(np.uint32) * 16).astype(np.uint16)
    loaded = _load(synthetic_dicom_dataset(pixels, bits_stored=16))
    arr = np.asarray(loaded.image)
    assert loaded.metadata["window_source"] == "data_range"
    assert loaded.metadata["bits_stored"] == 16
    assert (arr.min(), arr.max()) == (0, 255)


def test_eight_bit_dicom_hashes_like_the_same_pixels_as_png() -> None:
    pixels = phantom_cxr_array((230, 240))
    dicom = _load(synthetic_dicom_dataset(pixels, bits_stored=8))
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    png = load_image(buffer.getvalue(), name="export.png")
    assert dicom.content_hash == png.content_hash


def test_colour_dicom_is_converted_to_grey_with_warning() -> None:
    rgb = np.stack([phantom_cxr_array((220, 230))] * 3, axis=-1)
    rgb[..., 0] = 255  # strongly red
    loaded = _load(synthetic_dicom_dataset(rgb, photometric="RGB", bits_stored=8))
    assert loaded.image.mode == "L"
    assert any("colour" in w and "RGB" in w for w in loaded.warnings)


# --- multi-frame and gating warnings ----------------------------------------------------------


def test_multi_frame_uses_first_frame_with_warning() -> None:
    first = _phantom12(seed=1)
    frames = np.stack([first, np.zeros_like(first), np.full_like(first, 4095)])
    attrs = {"WindowCenter": 2048, "WindowWidth": 4096}
    loaded = _load(synthetic_dicom_dataset(frames, bits_stored=12, attributes=attrs))
    single = _load(synthetic_dicom_dataset(first, bits_stored=12, attributes=attrs))
    assert np.array_equal(np.asarray(loaded.image), np.asarray(single.image))
    assert loaded.metadata["frames"] == 3
    assert any("3 frames" in w and "first" in w for w in loaded.warnings)


@pytest.mark.parametrize("modality", ["CT", "MR", "US", "MG", "OT"])
def test_non_radiography_modality_warns_but_loads(modality: str) -> None:
    loaded = _load(synthetic_dicom_dataset(_phantom12(), bits_stored=12, attributes={"Modality": modality}))
    assert loaded.image.mode == "L"
    assert any(f"Modality is {modality}" in w for w in loaded.warnings)


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_radiography_modality_does_not_warn(modality: str) -> None:
    loaded = _load(synthetic_dicom_dataset(_phantom12(), bits_stored=12, attributes={"Modality": modality}))
    assert not any("Modality" in w for w in loaded.warnings)


@pytest.mark.parametrize(
    ("body_part", "warns"),
    [("CHEST", False), ("PORT CHEST", False), ("THORAX", False), ("KNEE", True), ("ABDOMEN", True)],
)
def test_body_part_examined_warns_when_not_chest(body_part: str, warns: bool) -> None:
    loaded = _load(
        synthetic_dicom_dataset(_phantom12(), bits_stored=12, attributes={"BodyPartExamined": body_part})
    )
    assert any("Body Part Examined" in w for w in loaded.warnings) is warns


def test_unrecognised_codes_are_not_echoed() -> None:
    attrs = {"Modality": "XRAYSMITH", "ViewPosition": "ERECT SMITH", "BodyPartExamined": "SMITHS ARM"}
    loaded = _load(synthetic_dicom_dataset(_phantom12(), bits_stored=12, attributes=attrs))
    assert loaded.metadata["modality"] is None
    assert loaded.metadata["view_position"] is None
    assert any("Modality is not a recognised code" in w for w in loaded.warnings)
    assert any("Body Part Examined is an unrecognised value" in w for w in loaded.warnings)
    assert not any("SMITH" in w.upper() for w in loaded.warnings)


@pytest.mark.parametrize(("value", "warns"), [("YES", True), ("NO", False)])
def test_burned_in_annotation_warns(value: str, warns: bool) -> None:
    loaded = _load(
        synthetic_dicom_dataset(_phantom12(), bits_stored=12, attributes={"BurnedInAnnotation": value})
    )
    assert any("burned into the pixels" in w for w in loaded.warnings) is warns


def test_dicom_without_preamble_loads_with_warning() -> None:
    ds = synthetic_dicom_dataset(
        _phantom12(), bits_stored=12, attributes={"WindowCenter": 2048, "WindowWidth": 4096}
    )
    with_preamble = _load(ds)
    bare = load_image(dicom_bytes(ds, preamble=False), name="old.dcm")
    assert np.array_equal(np.asarray(bare.image), np.asarray(with_preamble.image))
    assert any("preamble" in w for w in bare.warnings)


def test_dicom_detected_by_content_even_when_named_png(tmp_path: Path) -> None:
    path = tmp_path / "chest.png"
    path.write_bytes(dicom_bytes(synthetic_dicom_dataset(_phantom12(), bits_stored=12)))
    loaded = load_image(path)
    assert loaded.metadata["source_format"] == "dicom"
    assert loaded.name == "chest.png"


# --- refusals ---------------------------------------------------------------------------------


def test_dicom_without_pixel_data_is_refused() -> None:
    ds = synthetic_dicom_dataset(_phantom12(), bits_stored=12)
    del ds.PixelData
    with pytest.raises(NoPixelDataError, match=r"^report\.dcm: .*no pixel data \(a Digital X-Ray"):
        load_image(dicom_bytes(ds), name="report.dcm")


def test_no_pixel_data_message_does_not_echo_a_non_standard_sop_class() -> None:
    ds = synthetic_dicom_dataset(_phantom12(), bits_stored=12, attributes={"SOPClassUID": "1.2.3.4.5"})
    del ds.PixelData
    with pytest.raises(NoPixelDataError) as info:
        load_image(dicom_bytes(ds), name="sr.dcm")
    assert "1.2.3.4.5" not in str(info.value)


def test_absurd_rows_columns_refused_before_decoding() -> None:
    ds = synthetic_dicom_dataset(_phantom12(), bits_stored=12, attributes={"Rows": 60000, "Columns": 60000})
    with pytest.raises(
        ImageTooLargeError, match=r"60000x60000 = 3600\.0 megapixels.*limit of 50\.0 megapixels"
    ):
        _load(ds)


def test_more_pixel_data_declared_than_present_is_refused() -> None:
    ds = synthetic_dicom_dataset(_phantom12(), bits_stored=12, attributes={"Rows": 4000, "Columns": 3000})
    with pytest.raises(CorruptImageError, match=r"3000x4000 pixels .* holds only \d+ bytes"):
        _load(ds)


def test_absurd_frame_count_refused() -> None:
    ds = synthetic_dicom_dataset(_phantom12(), bits_stored=12, attributes={"NumberOfFrames": 100000})
    with pytest.raises(ImageTooLargeError, match=r"100000 frames.*limit of 1000"):
        _load(ds)


def test_pixel_limit_is_configurable() -> None:
    ds = synthetic_dicom_dataset(_phantom12(), bits_stored=12)
    with pytest.raises(ImageTooLargeError, match=r"limit of 0\.0 megapixels"):
        _load(ds, limits=ImageLimits(max_pixels=10_000))


def test_transfer_syntax_without_any_decoder_is_refused() -> None:
    ds = synthetic_dicom_dataset(
        phantom_cxr_array((64, 64)),
        bits_stored=8,
        transfer_syntax=dcm_uid.MPEG2MPML,
        encapsulated_frames=[b"\x00\x00\x01\xb3" + bytes(60)],
    )
    with pytest.raises(UnsupportedTransferSyntaxError, match=r"MPEG2 .*cannot decode.*uncompressed"):
        _load(ds)


def test_missing_decoder_plugin_names_the_pip_install() -> None:
    if get_decoder(dcm_uid.JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here, so the refusal cannot be provoked")
    ds = synthetic_dicom_dataset(
        phantom_cxr_array((64, 64)),
        bits_stored=8,
        transfer_syntax=dcm_uid.JPEGLSLossless,
        encapsulated_frames=[b"\xff\xd8\xff\xf7" + bytes(60)],
    )
    with pytest.raises(
        UnsupportedTransferSyntaxError, match=r"JPEG-LS.*pip install pylibjpeg pylibjpeg-libjpeg"
    ):
        _load(ds)


@pytest.mark.parametrize(
    ("syntax", "package"),
    [
        (dcm_uid.JPEGLSLossless, "pylibjpeg-libjpeg"),
        (dcm_uid.JPEGLosslessSV1, "pylibjpeg-libjpeg"),
        (dcm_uid.JPEG2000Lossless, "pylibjpeg-openjpeg"),
        (dcm_uid.HTJ2K, "pylibjpeg-openjpeg"),
    ],
)
def test_install_hint_names_the_decoder_package(syntax: str, package: str) -> None:
    assert package in install_hint(syntax).split()


def test_jpeg_baseline_dicom_decodes_when_a_plugin_is_present() -> None:
    if not get_decoder(dcm_uid.JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG baseline decoder plugin installed")
    pixels = phantom_cxr_array((200, 210))
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
    ds = synthetic_dicom_dataset(
        pixels,
        bits_stored=8,
        transfer_syntax=dcm_uid.JPEGBaseline8Bit,
        encapsulated_frames=[buffer.getvalue()],
    )
    arr = np.asarray(_load(ds).image, dtype=np.int16)
    assert np.abs(arr - pixels.astype(np.int16)).mean() < 3


def test_rle_lossless_dicom_decodes_pixel_exact() -> None:
    pixels = phantom_cxr_array((200, 210))
    ds = synthetic_dicom_dataset(pixels, bits_stored=8)
    ds.compress(dcm_uid.RLELossless)
    assert np.array_equal(np.asarray(_load(ds).image), pixels)


def test_corrupt_dicom_header_is_refused() -> None:
    meta = b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00"  # Transfer Syntax UID element
    broken_sequence = (
        b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\x10\x00\x00\x00\x01\x02"
    )
    data = bytes(128) + b"DICM" + meta + broken_sequence
    with pytest.raises(CorruptImageError, match=r"^bad\.dcm: "):
        load_image(data, name="bad.dcm")


def test_truncated_dicom_is_refused() -> None:
    data = dicom_bytes(synthetic_dicom_dataset(_phantom12(), bits_stored=12))
    with pytest.raises(ImageInputError, match=r"^cut\.dcm: "):
        load_image(data[: len(data) // 2], name="cut.dcm")


# --- windowing maths (PS3.3 C.11.2.1.2) against pydicom's own implementation ------------------


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize(("center", "width"), [(2048.0, 4096.0), (1000.0, 300.0), (700.5, 1.0)])
def test_window_to_uint8_matches_pydicom_apply_windowing(function: str, center: float, width: float) -> None:
    from pydicom.pixels import apply_windowing

    from echo_model.imaging.tone import Window, window_to_uint8

    if function != "LINEAR" and width == 1.0:
        width = 0.5  # exercise a sub-unit width where the standard allows it
    values = np.arange(0, 4096, dtype=np.uint16).reshape(64, 64)
    ds = Dataset()
    ds.BitsStored, ds.PixelRepresentation, ds.PhotometricInterpretation = 12, 0, "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    with np.errstate(over="ignore"):  # pydicom's SIGMOID overflows exp() harmlessly to 0/1
        reference = np.rint(apply_windowing(values.astype(np.float64), ds) / 4095.0 * 255.0)
    ours = window_to_uint8(values, Window(center=center, width=width, function=function))
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("center", "width", "function"),
    [(0.0, 0.5, "LINEAR"), (0.0, 0.0, "LINEAR_EXACT"), (float("nan"), 10.0, "LINEAR"), (0.0, 10.0, "GAMMA")],
)
def test_window_rejects_invalid_parameters(center: float, width: float, function: str) -> None:
    from echo_model.imaging.tone import Window

    with pytest.raises(ValueError, match=r"window|VOI LUT function"):
        Window(center=center, width=width, function=function)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32])
@pytest.mark.parametrize(
    ("center", "width", "function"),
    [(1000.0, 3000.0, "LINEAR"), (0.5, 1.0, "LINEAR"), (-300.0, 20_000.0, "LINEAR_EXACT"), (200.0, 900.0, "SIGMOID")],
)
def test_integer_pixels_are_windowed_exactly_as_their_float_values(
    dtype: type, center: float, width: float, function: str
) -> None:
    """Integer data go through a table over their range; every pixel must get the float mapping's value, at
    each end of a signed type's range too (where ``x - min`` overflows the type itself)."""
    from echo_model.imaging.tone import Window, _window_levels, window_to_uint8

    info = np.iinfo(dtype)
    rng = np.random.default_rng(3)
    lo, hi = max(int(info.min), -20_000), min(int(info.max), 20_000)  # int16: 40,001 levels, not 2**16
    values = rng.integers(lo, hi, size=(40, 50), endpoint=True).astype(dtype)
    values.flat[:2] = lo, hi  # (H, W) the type's (or the test's) extremes
    window = Window(center=center, width=width, function=function)
    ours = window_to_uint8(values, window)
    assert ours.dtype == np.uint8 and ours.shape == values.shape
    assert np.array_equal(ours, _window_levels(values.astype(np.float64), window))


def test_integer_pixels_beyond_the_table_take_the_float_path() -> None:
    from echo_model.imaging.tone import _LUT_LEVELS, Window, _window_levels, window_to_uint8

    values = np.array([[0, _LUT_LEVELS * 4], [7, 123_456]], dtype=np.int64)  # (2, 2) wider than the table
    window = Window(center=100_000.0, width=300_000.0)
    assert np.array_equal(window_to_uint8(values, window), _window_levels(values.astype(np.float64), window))
