"""De-identification: nothing identifying leaves the input layer."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from pydicom.dataset import FileDataset

from echo_model.imaging import (
    ALLOWED_METADATA_KEYS,
    ALLOWED_PNG_CHUNKS,
    LoadedImage,
    content_hash,
    load_image,
    pixel_content_hash,
    png_chunk_types,
    png_without_pixels,
    to_deidentified_png,
)
from echo_model.imaging.synthetic import dicom_bytes, phantom_cxr, phantom_cxr_array, synthetic_dicom_dataset

IDENTIFYING: dict[str, str] = {
    "PatientName": "Doe^John",
    "PatientID": "PID-98765-X",
    "PatientBirthDate": "19700101",
    "PatientBirthTime": "063000",
    "PatientAddress": "12 Elmwood Street Springfield",
    "PatientTelephoneNumbers": "555-0199-4242",
    "OtherPatientIDs": "MRN-55501-Q",
    "PatientMotherBirthName": "Roe^Mary",
    "AccessionNumber": "ACC-20240917-77",
    "InstitutionName": "Saint Example General Hospital",
    "InstitutionAddress": "1 Hospital Way Gotham",
    "InstitutionalDepartmentName": "Radiology Wing Q",
    "ReferringPhysicianName": "Welby^Marcus",
    "PerformingPhysicianName": "House^Gregory",
    "OperatorsName": "Tech^Tina",
    "RequestingPhysician": "Quinn^Michaela",
    "StudyDate": "20240917",
    "SeriesDate": "20240917",
    "AcquisitionDate": "20240917",
    "ContentDate": "20240917",
    "StudyTime": "101530",
    "StudyID": "STUDY-4242",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1111",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.2222",
    "FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.3333",
    "DeviceSerialNumber": "SN-XR-000042",
    "StationName": "XRAYROOM7",
    "StudyDescription": "Chest PA for John Doe",
    "ImageComments": "pt Doe called back 1970-01-01",
}

# Every spelling that must not leak. Short ones are only searched outside the compressed pixels
# (a 3-byte string can occur in any compressed stream by chance).
FORBIDDEN = [
    *IDENTIFYING.values(),
    "Doe^John",
    "John Doe",
    "DOE",
    "Doe",
    "John",
    "19700101",
    "1970-01-01",
    "20240917",
    "2024-09-17",
    "Welby",
    "Tina",
    "private-phi-note",
    "PRIVATE-MRN-777",
]


def _phi_dataset(**extra: object) -> FileDataset:
    ds = synthetic_dicom_dataset(
        phantom_cxr_array((260, 280), dtype="uint16"),
        bits_stored=12,
        attributes={
            **IDENTIFYING,
            "Modality": "DX",
            "ViewPosition": "PA",
            "BodyPartExamined": "CHEST",
            **extra,
        },
    )
    block = ds.private_block(0x0011, "ACME PHI STORE", create=True)
    block.add_new(0x01, "LO", "private-phi-note John Doe")
    block.add_new(0x02, "LO", "PRIVATE-MRN-777")
    block.add_new(0x03, "DA", "19700101")
    return ds


def _assert_no_phi(loaded: LoadedImage, png: bytes) -> None:
    exposed_text = " ".join(
        [repr(dict(loaded.metadata)), *loaded.warnings, loaded.name, repr(loaded)]
    ).lower()
    header_bytes = png_without_pixels(png).lower()
    full_bytes = png.lower()
    for value in FORBIDDEN:
        needle = value.lower()
        assert needle not in exposed_text, value
        assert needle.encode() not in header_bytes, value
        if len(needle) >= 6:
            assert needle.encode() not in full_bytes, value
            assert needle.encode("utf-16-le") not in full_bytes, value


def test_phi_dicom_has_at_least_twenty_identifying_attributes() -> None:
    ds = _phi_dataset()
    present = [keyword for keyword in IDENTIFYING if keyword in ds]
    assert len(present) >= 20
    assert b"Doe^John" in dicom_bytes(ds)  # the fixture really carries the PHI


def test_dicom_phi_never_reaches_png_metadata_or_warnings() -> None:
    loaded = load_image(dicom_bytes(_phi_dataset(BurnedInAnnotation="YES")), name="view.dcm")
    png = to_deidentified_png(loaded)
    _assert_no_phi(loaded, png)
    assert any("burned into the pixels" in w for w in loaded.warnings)  # warnings were produced


def test_metadata_holds_only_the_allow_list() -> None:
    loaded = load_image(dicom_bytes(_phi_dataset()), name="view.dcm")
    assert set(loaded.metadata) <= ALLOWED_METADATA_KEYS
    assert loaded.metadata["modality"] == "DX"
    assert loaded.metadata["view_position"] == "PA"
    assert loaded.metadata["photometric_interpretation"] == "MONOCHROME2"
    assert loaded.metadata["bits_stored"] == 12


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # the fixture is deliberately invalid
def test_free_text_in_coded_attributes_is_sanitised() -> None:
    ds = _phi_dataset(ViewPosition="Doe^John", BodyPartExamined="John's knee")
    loaded = load_image(dicom_bytes(ds), name="view.dcm")
    _assert_no_phi(loaded, to_deidentified_png(loaded))


def test_png_and_jpeg_metadata_chunks_are_dropped() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Doe^John")
    info.add_itxt("Comment", "John Doe born 1970-01-01", lang="en", tkey="Comment")
    info.add_text("Patient", "PID-98765-X", zip=True)  # zTXt
    info.add(b"tIME", bytes([7, 178, 1, 1, 0, 0, 0]))  # 1970-01-01
    exif = Image.Exif()
    exif[0x013B] = "John Doe"  # Artist
    exif[0x0132] = "1970:01:01 00:00:00"  # DateTime
    buffer = io.BytesIO()
    phantom_cxr((280, 300)).save(buffer, format="PNG", pnginfo=info, exif=exif.tobytes(), dpi=(300, 300))
    source_png = buffer.getvalue()
    assert {b"tEXt", b"iTXt", b"zTXt", b"tIME", b"eXIf"} <= set(png_chunk_types(source_png))

    jpeg = io.BytesIO()
    phantom_cxr((280, 300)).save(jpeg, format="JPEG", exif=exif.tobytes(), comment=b"Doe^John 19700101")
    for data in (source_png, jpeg.getvalue()):
        loaded = load_image(data, name="upload")
        png = to_deidentified_png(loaded)
        assert set(png_chunk_types(png)) <= ALLOWED_PNG_CHUNKS
        _assert_no_phi(loaded, png)


def test_deidentified_png_is_lossless_and_deterministic() -> None:
    loaded = load_image(dicom_bytes(_phi_dataset()), name="view.dcm")
    png = to_deidentified_png(loaded)
    assert png == to_deidentified_png(loaded)
    with Image.open(io.BytesIO(png)) as decoded:
        assert decoded.mode == "L"
        assert np.array_equal(np.asarray(decoded), np.asarray(loaded.image))
        assert decoded.info == {}
    reloaded = load_image(png, name="again.png")
    assert reloaded.content_hash == loaded.content_hash


def test_png_chunks_are_exactly_header_data_end() -> None:
    loaded = load_image(dicom_bytes(_phi_dataset()), name="view.dcm")
    chunks = png_chunk_types(to_deidentified_png(loaded))
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    assert set(chunks[1:-1]) == {b"IDAT"}
    assert zlib.crc32(b"") == 0  # sanity of the zlib import used by the helper module


def test_content_hash_tracks_pixels_only() -> None:
    a = load_image(dicom_bytes(_phi_dataset()), name="a.dcm")
    b = load_image(dicom_bytes(_phi_dataset(PatientName="Other^Person", StudyDate="20000101")), name="b.dcm")
    shifted = synthetic_dicom_dataset(phantom_cxr_array((260, 280), dtype="uint16", seed=3), bits_stored=12)
    c = load_image(dicom_bytes(shifted), name="c.dcm")
    assert len(a.content_hash) == 64 and int(a.content_hash, 16) >= 0
    assert a.content_hash == b.content_hash == content_hash(a) == pixel_content_hash(a.image)
    assert c.content_hash != a.content_hash


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"metadata": {"PatientName": "Doe^John"}}, "allow-list"),
        ({"metadata": {"modality": ["CR"]}}, "str/int/float"),
        ({"cxr_likeness": 1.5}, "cxr_likeness"),
        ({"content_hash": "0" * 64}, "does not match"),
    ],
)
def test_loaded_image_refuses_non_allow_listed_content(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        LoadedImage(image=phantom_cxr((64, 64)), name="x", **kwargs)  # type: ignore[arg-type]


def test_loaded_image_requires_grey() -> None:
    with pytest.raises(ValueError, match="mode 'L'"):
        LoadedImage(image=Image.new("RGB", (40, 40)), name="x")


def test_loaded_image_metadata_is_read_only() -> None:
    loaded = load_image(dicom_bytes(_phi_dataset()), name="view.dcm")
    with pytest.raises(TypeError):
        loaded.metadata["PatientName"] = "Doe^John"  # type: ignore[index]
