"""PHI: an identifier-laden DICOM with an identifying file name goes through the served app
(upload, draft, save, sign, addendum, export, history, audit, a refused upload) and no identifier, in any
spelling, is left in the database, the data directory, PNG chunks, the export or the DEBUG log."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from echo_model.imaging.original import original_png
from echo_model.imaging.synthetic import dicom_bytes, phantom_cxr, phantom_cxr_array

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import phi_scan

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


@pytest.fixture(scope="module")
def needles() -> list[str]:
    return phi_scan.forbidden_spellings(phi_scan.phi_dataset())


def test_the_input_carries_twenty_identifiers_and_private_tags(needles: list[str]) -> None:
    ds = phi_scan.phi_dataset()
    assert sum(1 for keyword in phi_scan.IDENTIFYING if keyword in ds) >= 20
    private = [elem.value for elem in ds if elem.tag.is_private and not elem.tag.is_private_creator]
    assert set(phi_scan.PRIVATE_VALUES) <= {str(v) for v in private}
    raw = dicom_bytes(ds)
    assert b"Doe^John" in raw and b"MRN4821357" in raw and b"PRIVATE-MRN-777" in raw
    for spelling in ("Doe^John", "John Doe", "19620715", "1962-07-15", "15/07/1962", "ACC88231907",
                     str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), phi_scan.PHI_FILE_NAME):
        assert spelling in needles


def test_scanner_finds_every_hiding_place(needles: list[str], tmp_path: Path) -> None:
    """The scan could only pass vacuously if it missed these; each must be reported."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "born 1962-07-15")
    png = io.BytesIO()
    phantom_cxr((64, 64)).save(png, format="PNG", pnginfo=info)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("export/records.jsonl", '{"findings": "JOHN DOE, MRN 4821357"}')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "view.png").write_bytes(png.getvalue())
    (tmp_path / "export.zip").write_bytes(archive.getvalue())
    (tmp_path / "db-wal").write_bytes(b"\x00\x01" + "Welby^Marcus".encode("utf-16-le") + b"\x00")
    (tmp_path / "app.log").write_text("INFO uploaded doe, john: 15/07/1962\n")
    (tmp_path / "Doe_John_19620715_MRN4821357.dcm").write_bytes(b"")
    found, files, _ = phi_scan.scan_tree(tmp_path, needles, strict_png_under=("data/",))
    hits = {(f.where, f.needle, f.how) for f in found}
    assert files == 5
    assert ("data/view.png", "1962-07-15", "content") in hits and ("data/view.png", "tEXt", "png chunk") in hits
    assert {("export.zip!export/records.jsonl", n, "content") for n in ("John Doe", "4821357")} <= hits
    assert ("db-wal", "Welby^Marcus", "content") in hits
    assert {("app.log", n, "content") for n in ("Doe, John", "15/07/1962", "Doe", "John")} <= hits
    assert ("Doe_John_19620715_MRN4821357.dcm", "Doe_John", "file name") in hits


def test_a_16_bit_original_passes_only_as_pixels_without_phi(needles: list[str], tmp_path: Path) -> None:
    """The stored 16-bit originals: a clean one passes; a text chunk, PHI in the pixels or an 8-bit file fail."""
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    pixels = phantom_cxr_array((64, 64), dtype="uint16", seed=3)
    (images / "clean.16.png").write_bytes(original_png(pixels))
    assert phi_scan.scan_originals(tmp_path / "data", needles) == ([], 1)

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "Doe^John")
    chunk = io.BytesIO()
    Image.fromarray(pixels).save(chunk, format="PNG", pnginfo=info)
    (images / "chunk.16.png").write_bytes(chunk.getvalue())
    spelled = np.frombuffer((b"MRN4821357" * 820)[:64 * 64 * 2], dtype=">u2").reshape(64, 64)
    (images / "burned.16.png").write_bytes(original_png(spelled.astype(np.uint16)))
    eight = io.BytesIO()
    phantom_cxr((64, 64)).save(eight, format="PNG")
    (images / "eight.16.png").write_bytes(eight.getvalue())
    found, count = phi_scan.scan_originals(tmp_path / "data", needles)
    hits = {(f.where, f.needle, f.how) for f in found}
    assert count == 4 and not any(where == "images/clean.16.png" for where, _, _ in hits)
    assert {("images/chunk.16.png", "tEXt", "png chunk"), ("images/chunk.16.png", "Doe^John", "content")} <= hits
    assert ("images/burned.16.png", "MRN4821357", "content") in hits
    assert ("images/eight.16.png", "bit depth 8, colour type 0", "png format") in hits


def test_scanner_does_not_flag_ordinary_words(needles: list[str], tmp_path: Path) -> None:
    (tmp_path / "app.log").write_text("The heart does not look enlarged; Johnson's sign absent; anecdote.\n")
    found, _, _ = phi_scan.scan_tree(tmp_path, needles)
    assert found == []


@pytest.mark.slow  # a child-process server: about 20-40 s on 2 CPUs
def test_no_identifier_survives_a_trip_through_the_app(tmp_path: Path) -> None:
    report = phi_scan.run_phi_scan(tmp_path, max_new_tokens=16)
    assert report.draft_signed and report.exported_records == 1 and report.broken_upload_refused
    assert report.identifying_attributes >= 20 and report.needles_found_in_input >= 40
    assert report.log_lines > 50 and report.files_scanned >= 10  # the DEBUG log and the files were really there
    assert report.original_pngs == 1  # the DICOM's 16-bit originals were stored, checked and scanned
    assert report.findings == [], "\n".join(f"{f.where}: {f.needle!r} ({f.how})" for f in report.findings)
