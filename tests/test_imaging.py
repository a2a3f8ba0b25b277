"""PNG/JPEG path, sources, limits, the chest-likeness gate and the three input lists.

The ``ACCEPTED`` / ``WARNED`` / ``REFUSED`` tables below mirror the three lists in
``docs/inputs.md`` row by row (same ids); ``test_docs_lists_match_tests`` keeps them in sync.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import uid as dcm_uid
from pydicom.pixels import get_decoder

from echo_model.imaging import (
    CXR_LIKENESS_THRESHOLD,
    DEFAULT_UPLOAD_NAME,
    CorruptImageError,
    EmptyFileError,
    ImageInputError,
    ImageLimits,
    ImageTooLargeError,
    ImageTooSmallError,
    NoPixelDataError,
    UnsupportedFormatError,
    UnsupportedTransferSyntaxError,
    assess_cxr_likeness,
    cxr_likeness,
    detect_format,
    load_image,
    load_study,
)
from echo_model.imaging.synthetic import (
    NON_CXR_KINDS,
    colourful_noise,
    dicom_bytes,
    non_cxr_example,
    phantom_cxr,
    phantom_cxr_array,
    synthetic_dicom_dataset,
    text_screenshot,
    uniform,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "inputs.md"


# --- builders ---------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def cxr(size: tuple[int, int] = (300, 320), seed: int = 0) -> Image.Image:
    return phantom_cxr(size, seed=seed)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims ``width`` x ``height`` (CRC fixed): a bomb header."""
    data = bytearray(encode(cxr((64, 64))))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_with_patched_sof(
    jpeg: bytes | None = None, *, width: int | None = None, height: int | None = None, precision: int | None = None
) -> bytes:
    """A JPEG (default: a 64x64 phantom) whose start-of-frame header declares other dimensions or precision."""
    data = bytearray(jpeg if jpeg is not None else encode(cxr((64, 64)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    if precision is not None:
        data[sof + 4] = precision
    if height is not None:
        struct.pack_into(">H", data, sof + 5, height)
    if width is not None:
        struct.pack_into(">H", data, sof + 7, width)
    return bytes(data)


def png_16bit() -> bytes:
    return encode(Image.fromarray(phantom_cxr_array((300, 320), dtype="uint16") * 16))


def rgba_with_transparent_margin() -> bytes:
    rgba = cxr().convert("RGBA")
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (0, 0, 20, rgba.height))
    rgba.putalpha(alpha)
    return encode(rgba)


def jpeg_exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    return encode(cxr((320, 300)), "JPEG", exif=exif.tobytes())


def animated_png() -> bytes:
    return encode(cxr(), save_all=True, append_images=[cxr(seed=1)])


def dicom(**attributes: object) -> bytes:
    return dicom_bytes(
        synthetic_dicom_dataset(
            phantom_cxr_array((300, 320), dtype="uint16"), bits_stored=12, attributes=attributes
        )
    )


def dicom_monochrome1() -> bytes:
    """MONOCHROME1 stores bone dark; with its rescale it must render like the MONOCHROME2 one."""
    inverted = 4095 - phantom_cxr_array((300, 320), dtype="uint16")
    attrs = {"RescaleSlope": 1, "RescaleIntercept": 0, "WindowCenter": 2048, "WindowWidth": 4096}
    return dicom_bytes(
        synthetic_dicom_dataset(inverted, photometric="MONOCHROME1", bits_stored=12, attributes=attrs)
    )


def dicom_multiframe() -> bytes:
    frame = phantom_cxr_array((300, 320), dtype="uint16")
    return dicom_bytes(synthetic_dicom_dataset(np.stack([frame, frame]), bits_stored=12))


def dicom_rle() -> bytes:
    ds = synthetic_dicom_dataset(phantom_cxr_array((300, 320)), bits_stored=8)
    ds.compress(dcm_uid.RLELossless)
    return dicom_bytes(ds)


def dicom_colour() -> bytes:
    rgb = np.stack([phantom_cxr_array((300, 320))] * 3, axis=-1)
    return dicom_bytes(synthetic_dicom_dataset(rgb, photometric="RGB", bits_stored=8))


def dicom_without_modality() -> bytes:
    ds = synthetic_dicom_dataset(phantom_cxr_array((300, 320), dtype="uint16"), bits_stored=12)
    del ds.Modality
    return dicom_bytes(ds)


def dicom_without_pixels() -> bytes:
    ds = synthetic_dicom_dataset(phantom_cxr_array((64, 64)), bits_stored=8)
    del ds.PixelData
    return dicom_bytes(ds)


def dicom_encapsulated(syntax: str) -> bytes:
    if syntax == dcm_uid.JPEGLSLossless and get_decoder(syntax).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    ds = synthetic_dicom_dataset(
        phantom_cxr_array((64, 64)), bits_stored=8, transfer_syntax=syntax, encapsulated_frames=[bytes(64)]
    )
    return dicom_bytes(ds)


def dicom_float_pixels() -> bytes:
    ds = synthetic_dicom_dataset(phantom_cxr_array((64, 64)), bits_stored=8)
    del ds.PixelData
    ds.FloatPixelData = np.zeros((64, 64), dtype="<f4").tobytes()
    return dicom_bytes(ds)


# --- the three lists (ids mirror docs/inputs.md) ----------------------------------------------

Builder = Callable[[], list[bytes]]


def one(factory: Callable[[], bytes]) -> Builder:
    return lambda: [factory()]


ACCEPTED: dict[str, Builder] = {
    "A1": one(lambda: encode(cxr())),
    "A2": one(png_16bit),
    "A3": one(lambda: encode(cxr().convert("RGB"))),
    "A4": one(lambda: encode(cxr().convert("P"))),
    "A5": one(lambda: encode(cxr(), "JPEG", quality=92)),
    "A6": one(lambda: encode(cxr().convert("RGB"), "JPEG", progressive=True)),
    "A7": one(lambda: dicom(WindowCenter=2048, WindowWidth=4096, Modality="CR", BodyPartExamined="CHEST")),
    "A8": one(dicom_monochrome1),
    "A9": one(dicom_rle),
    "A10": lambda: [encode(cxr(seed=1)), dicom()],
}

WARNED: dict[str, tuple[Builder, str]] = {
    "W1": (one(lambda: encode(colourful_noise((320, 300)))), "in colour"),
    "W2": (one(rgba_with_transparent_margin), "composited on black"),
    "W3": (one(jpeg_exif_rotated), "EXIF orientation"),
    "W4": (one(lambda: encode(cxr((120, 128)))), "is small"),
    "W5": (one(dicom_multiframe), "only the first is used"),
    "W6": (one(animated_png), "only the first is used"),
    "W7": (one(lambda: dicom(Modality="CT")), "Modality is CT"),
    "W8": (one(dicom_without_modality), "does not state its Modality"),
    "W9": (one(lambda: dicom(BodyPartExamined="KNEE")), "Body Part Examined is KNEE"),
    "W10": (one(lambda: dicom(BurnedInAnnotation="YES")), "burned into the pixels"),
    "W11": (
        one(
            lambda: dicom_bytes(
                synthetic_dicom_dataset(phantom_cxr_array((300, 320)), bits_stored=8), preamble=False
            )
        ),
        "preamble",
    ),
    "W12": (one(lambda: dicom(WindowCenter=100, WindowWidth=0)), "invalid"),
    "W13": (one(dicom_colour), "DICOM is in colour"),
    "W14": (one(lambda: encode(text_screenshot())), "does not look like a chest radiograph"),
    "W15": (lambda: [encode(cxr()), encode(cxr())], "pixel-identical"),
}

REFUSED: dict[str, tuple[Callable[[], bytes], type[ImageInputError], str]] = {
    "R1": (lambda: b"", EmptyFileError, r"empty \(0 bytes\)"),
    "R2": (
        lambda: b"<!DOCTYPE html><html><body>Session expired</body></html>",
        UnsupportedFormatError,
        "an HTML page",
    ),
    "R3": (lambda: b"Findings: normal.\n" * 5, UnsupportedFormatError, "a text file"),
    "R4": (lambda: encode(cxr(), "GIF"), UnsupportedFormatError, "a GIF image"),
    "R5": (lambda: encode(cxr(), "TIFF"), UnsupportedFormatError, "a TIFF image"),
    "R6": (lambda: b"%PDF-1.7\n" + bytes(200), UnsupportedFormatError, "a PDF document"),
    "R7": (lambda: encode(cxr())[:3000], CorruptImageError, "PNG is damaged or truncated"),
    "R8": (lambda: encode(cxr(), "JPEG")[:2000], CorruptImageError, "JPEG is damaged or truncated"),
    "R9": (
        lambda: png_with_declared_size(20000, 20000),
        ImageTooLargeError,
        r"20000x20000 = 400\.0 megapixels.*limit of 50\.0",
    ),
    "R10": (lambda: jpeg_with_patched_sof(precision=12), UnsupportedFormatError, "12-bit JPEG"),
    "R11": (lambda: encode(cxr((16, 16))), ImageTooSmallError, "only 16x16 pixels"),
    "R12": (dicom_without_pixels, NoPixelDataError, "no pixel data"),
    "R13": (lambda: dicom(Rows=30000, Columns=30000), ImageTooLargeError, "900.0 megapixels"),
    "R14": (lambda: dicom(Rows=3000, Columns=3000), CorruptImageError, "holds only"),
    "R15": (
        lambda: dicom_encapsulated(dcm_uid.JPEGLSLossless),
        UnsupportedTransferSyntaxError,
        "pip install",
    ),
    "R16": (lambda: dicom_encapsulated(dcm_uid.MPEG2MPML), UnsupportedTransferSyntaxError, "cannot decode"),
    "R17": (dicom_float_pixels, UnsupportedFormatError, "floating-point"),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_accepted_inputs_load_without_warnings(case: str) -> None:
    views = load_study(ACCEPTED[case](), names=None)
    for view in views:
        assert view.image.mode == "L"
        assert view.warnings == ()
        assert view.cxr_likeness >= CXR_LIKENESS_THRESHOLD


@pytest.mark.parametrize("case", sorted(WARNED))
def test_warned_inputs_load_with_the_warning(case: str) -> None:
    builder, expected = WARNED[case]
    views = load_study(builder())
    assert all(view.image.mode == "L" for view in views)
    assert any(expected in warning for warning in views[-1].warnings), views[-1].warnings


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_inputs_raise_a_named_error(case: str) -> None:
    builder, error, pattern = REFUSED[case]
    with pytest.raises(error, match=pattern) as info:
        load_image(builder(), name="upload.png")
    assert str(info.value).startswith("upload.png: ")
    assert isinstance(info.value, ValueError)


def test_docs_lists_match_tests() -> None:
    text = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\|\s*([AWR]\d+)\s*\|", text, flags=re.MULTILINE))
    assert documented == set(ACCEPTED) | set(WARNED) | set(REFUSED)


# --- PNG / JPEG decoding ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16"])
def test_png_modes_give_the_same_grey_pixels(mode: str) -> None:
    grey = cxr()
    if mode == "I;16":
        source = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)  # 8 -> 16 bit, same range
    else:
        source = grey.convert(mode)
    loaded = load_image(encode(source), name=f"{mode}.png")
    expected = np.asarray(grey, dtype=np.int16)
    got = np.asarray(loaded.image, dtype=np.int16)
    if mode == "I;16":  # stretched over the data range, so compare after the same stretch
        low, high = expected.min(), expected.max()
        expected = np.rint((expected - low) / (high - low) * 255).astype(np.int16)
    assert np.abs(got - expected).max() <= 1
    assert loaded.metadata["original_mode"] == mode


def test_png_16bit_is_stretched_over_its_data_range() -> None:
    pixels = phantom_cxr_array((256, 260), dtype="uint16")  # 12-bit values in 16-bit PNG
    loaded = load_image(encode(Image.fromarray(pixels)), name="x16.png")
    out = np.asarray(loaded.image)
    assert (out.min(), out.max()) == (0, 255)
    assert loaded.metadata["bits_stored"] == 16
    assert loaded.metadata["window_source"] == "data_range"
    assert loaded.metadata["window_width"] == pytest.approx(float(pixels.max()) - float(pixels.min()))
    order = np.argsort(pixels.ravel(), kind="stable")
    assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()  # monotonic mapping


def test_jpeg_grey_is_close_to_source() -> None:
    grey = cxr()
    loaded = load_image(encode(grey, "JPEG", quality=95), name="a.jpg")
    assert loaded.metadata["source_format"] == "jpeg"
    assert np.abs(np.asarray(loaded.image, dtype=np.int16) - np.asarray(grey, dtype=np.int16)).mean() < 2


def test_transparent_pixels_become_black() -> None:
    loaded = load_image(rgba_with_transparent_margin(), name="t.png")
    assert np.asarray(loaded.image)[:, :20].max() == 0


def test_exif_rotation_is_applied() -> None:
    loaded = load_image(jpeg_exif_rotated(), name="r.jpg")
    assert loaded.size == (300, 320)


def test_colour_warning_only_for_colourful_images() -> None:
    grey_rgb = load_image(encode(cxr().convert("RGB")), name="g.png")
    colour = load_image(encode(colourful_noise((320, 300))), name="c.png")
    assert not any("colour" in w for w in grey_rgb.warnings)
    assert any("in colour" in w for w in colour.warnings)


def test_jpeg_header_declaring_huge_size_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError, match=r"20000x20000"):
        load_image(jpeg_with_patched_sof(width=20000, height=20000), name="bomb.jpg")


def test_png_with_bad_crc_is_refused() -> None:
    data = bytearray(encode(cxr()))
    data[60] ^= 0xFF
    with pytest.raises(CorruptImageError, match=r"^bad\.png: the PNG is damaged"):
        load_image(bytes(data), name="bad.png")


def test_png_signature_without_header_is_refused() -> None:
    with pytest.raises(CorruptImageError, match="no valid image header"):
        load_image(b"\x89PNG\r\n\x1a\n" + bytes(10), name="stub.png")


@pytest.mark.parametrize(
    ("data", "description"),
    [
        (b"PK\x03\x04" + bytes(40), "a ZIP archive"),
        (b"BM" + bytes(60), "a BMP image"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "a WebP image"),
        (bytes(range(256)) * 4, "an unrecognised binary file"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(20), "a HEIC photo"),
        ("Befund: unauffällig. 所见：正常\n".encode(), "a text file"),
    ],
)
def test_unsupported_content_is_described(data: bytes, description: str) -> None:
    with pytest.raises(UnsupportedFormatError, match=re.escape(description)):
        load_image(data, name="file.png")


def test_format_detected_from_content_not_extension(tmp_path: Path) -> None:
    path = tmp_path / "scan.dcm"
    path.write_bytes(encode(cxr(), "JPEG"))
    assert load_image(path).metadata["source_format"] == "jpeg"
    assert detect_format(encode(cxr())) == "png"
    assert detect_format(b"\x00" * 200) is None


# --- sources, names and limits ----------------------------------------------------------------


def test_all_source_kinds_give_the_same_image(tmp_path: Path) -> None:
    data = encode(cxr())
    path = tmp_path / "view.png"
    path.write_bytes(data)
    hashes = set()
    with path.open("rb") as handle:
        for source in (str(path), path, data, bytearray(data), memoryview(data), io.BytesIO(data), handle):
            hashes.add(load_image(source).content_hash)
    assert len(hashes) == 1


def test_names_never_include_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "broken.png"
    path.parent.mkdir()
    path.write_bytes(b"not an image at all")
    with pytest.raises(UnsupportedFormatError) as info:
        load_image(path)
    assert str(info.value).startswith("broken.png: ")
    assert str(tmp_path) not in str(info.value)
    assert load_image(encode(cxr())).name == DEFAULT_UPLOAD_NAME
    assert load_image(encode(cxr()), name="PA view").name == "PA view"


def test_file_size_limit_checked_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(encode(cxr()))
    with pytest.raises(ImageTooLargeError, match=r"^big\.png: the file is .* MiB, over the limit"):
        load_image(path, limits=ImageLimits(max_file_bytes=1000))


def test_pixel_limit_is_configurable() -> None:
    with pytest.raises(ImageTooLargeError, match=r"300x320 = 0\.1 megapixels"):
        load_image(encode(cxr()), name="x.png", limits=ImageLimits(max_pixels=50_000))


@pytest.mark.parametrize(
    "field", ["max_pixels", "max_frames", "max_file_bytes", "min_side", "warn_below_side"]
)
def test_limits_reject_non_positive_values(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ImageLimits(**{field: 0})


def test_threshold_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="cxr_threshold"):
        load_image(encode(cxr()), cxr_threshold=1.5)


def test_wrong_source_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="int"):
        load_image(42)  # type: ignore[arg-type]


# --- load_study -------------------------------------------------------------------------------


def test_load_study_keeps_order_and_names() -> None:
    views = load_study([encode(cxr(seed=1)), dicom()], names=["PA", "lateral"])
    assert [v.name for v in views] == ["PA", "lateral"]
    assert [v.metadata["source_format"] for v in views] == ["png", "dicom"]


def test_load_study_fails_naming_the_bad_view() -> None:
    with pytest.raises(EmptyFileError, match=r"^lateral: "):
        load_study([encode(cxr()), b""], names=["PA", "lateral"])


@pytest.mark.parametrize(
    ("sources", "names", "error", "pattern"),
    [
        ([], None, ValueError, "at least one"),
        ([b"x"] * 9, None, ValueError, "at most 8"),
        ([b"x"], ["a", "b"], ValueError, "2 names for 1"),
        (b"abc", None, TypeError, "sequence"),
    ],
)
def test_load_study_validates_arguments(
    sources: object, names: object, error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        load_study(sources, names=names)  # type: ignore[arg-type]


# --- chest-likeness gate ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_phantom_radiographs_pass_the_gate(seed: int) -> None:
    size = (260 + 20 * seed, 300 - 10 * seed)
    assert cxr_likeness(phantom_cxr(size, seed=seed)) >= CXR_LIKENESS_THRESHOLD


@pytest.mark.parametrize("kind", [k for k in NON_CXR_KINDS if k != "grey_smooth_noise"])
@pytest.mark.parametrize("seed", range(3))
def test_obvious_non_radiographs_fail_the_gate(kind: str, seed: int) -> None:
    assert cxr_likeness(non_cxr_example(kind, seed=seed)) < CXR_LIKENESS_THRESHOLD


def test_gate_warns_but_never_refuses() -> None:
    loaded = load_image(encode(uniform((300, 300), value=0)), name="black.png")
    assert loaded.image.mode == "L"
    assert loaded.cxr_likeness < CXR_LIKENESS_THRESHOLD
    assert any("no contrast" in w for w in loaded.warnings)


def test_gate_reasons_name_the_failing_feature() -> None:
    reasons = assess_cxr_likeness(colourful_noise()).reasons()
    assert reasons and "colour" in reasons[0]
    assert assess_cxr_likeness(phantom_cxr()).reasons() == []


def test_threshold_zero_disables_the_gate_warning() -> None:
    loaded = load_image(encode(text_screenshot()), name="s.png", cxr_threshold=0.0)
    assert not any("chest radiograph" in w for w in loaded.warnings)


def test_gate_rejects_empty_image() -> None:
    with pytest.raises(ValueError, match="empty image"):
        cxr_likeness(Image.new("L", (0, 0)))
