"""PHI scan: a DICOM full of identifiers goes through the whole app; none of them may be found anywhere after.

Usage::

    python scripts/phi_scan.py                  # prints the scan, writes results/reliability/phi.json
    python scripts/phi_scan.py --out scratch/reliability

The input is a synthetic DX DICOM carrying 31 identifying attributes (names, IDs, birth date, accession,
institution, physicians, dates, times, UIDs, device, free-text descriptions) and a private block, uploaded
under the file name ``Doe_John_19620715_MRN4821357.dcm``. The app runs in a child process with
``ECHO_AUTH`` set and its log captured at DEBUG; a ``gradio_client`` client uploads the file, drafts, saves,
signs, adds an addendum, exports, reads the history and the audit, and also uploads a broken file with an
identifying name (which must be refused). Then every file under the server's folder (database with its
WAL and shared-memory files, de-identified PNGs, Gradio's upload cache, the export staging folder, the
log) and every file the client downloaded (the export zip, extracted in memory) is searched, file names
included, for every identifier in every spelling: ``Doe^John``, ``John Doe``, ``DOE``, ``19620715``,
``1962-07-15``, ``15/07/1962``, the MRN, accession number, UIDs, and so on. Stored PNGs must also hold only
the IHDR/IDAT/IEND chunks; that includes the 16-bit copy of the DICOM's original pixel values
(``images/<hash>.16.png``), which must be there (the scan fails without it) and be a plain 16-bit grey PNG.

Matching: needles of six characters or more are searched as case-insensitive substrings (also as UTF-16);
shorter ones (``Doe``, ``John``) as case-insensitive whole words. Pixel data (PNG IDAT, compressed, and
the decoded pixels in both byte orders) is only searched for the long needles, as any three bytes can occur in
pixels by chance.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_process import ROOT, start_app

if TYPE_CHECKING:
    from pydicom.dataset import FileDataset

__all__ = ["IDENTIFYING", "PHI_FILE_NAME", "Finding", "PhiReport", "check_original_png", "forbidden_spellings",
           "phi_dataset", "run_phi_scan", "scan_originals", "scan_tree"]

PHI_FILE_NAME = "Doe_John_19620715_MRN4821357.dcm"
#: Identifying attributes of the test DICOM (DICOM keyword -> value).
IDENTIFYING: dict[str, str] = {
    "PatientName": "Doe^John",
    "PatientID": "MRN4821357",
    "IssuerOfPatientID": "Saint Elsewhere MRN registry",
    "OtherPatientIDs": "OPID-771203",
    "PatientBirthDate": "19620715",
    "PatientBirthTime": "062312",
    "PatientAddress": "42 Wallaby Way Sydney",
    "PatientTelephoneNumbers": "555-867-5309",
    "PatientMotherBirthName": "Roe^Mary",
    "AccessionNumber": "ACC88231907",
    "InstitutionName": "Saint Elsewhere General",
    "InstitutionAddress": "1 Hospital Plaza Springfield",
    "InstitutionalDepartmentName": "Radiology West Wing",
    "ReferringPhysicianName": "Welby^Marcus",
    "PerformingPhysicianName": "Kildare^James",
    "OperatorsName": "Okonkwo^Tina",
    "RequestingPhysician": "Quincy^Michaela",
    "StudyDate": "20190311",
    "SeriesDate": "20190311",
    "AcquisitionDate": "20190312",
    "ContentDate": "20190312",
    "StudyTime": "143207",
    "StudyID": "SID-5521",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.10101",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.20202",
    "FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.30303",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.40404",
    "DeviceSerialNumber": "SN-XR-990042",
    "StationName": "XRAYROOM7",
    "StudyDescription": "Chest PA for John Doe",
    "ImageComments": "pt Doe called back on 15/07/1962 line",
}
#: Values of the private block ("ACME PHI STORE", group 0x0011).
PRIVATE_VALUES = ("private-phi-note Doe John", "PRIVATE-MRN-777", "19620715")
#: Spellings derived from the values above (how the same facts show up elsewhere).
DERIVED = (
    "John Doe", "Doe, John", "Doe John", "John^Doe", "Doe_John", "Doe", "John", "Mary Roe", "Marcus Welby",
    "Welby", "Kildare", "Okonkwo", "Quincy", "Wallaby", "Elsewhere", "Springfield",
    "1962-07-15", "15/07/1962", "07/15/1962", "15.07.1962", "1962/07/15", "15-07-1962",
    "2019-03-11", "11/03/2019", "03/11/2019", "2019-03-12", "12/03/2019", "03/12/2019",
    "14:32:07", "06:23:12", "4821357", "88231907", "8675309", "5558675309", "771203", "990042",
    "Doe_John_19620715_MRN4821357", "private-phi-note", "PRIVATE-MRN-777",
)
LONG = 6  # needles at least this long are searched as substrings; shorter ones as whole words
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Suffix of the stored 16-bit originals (``images/<hash>.16.png``).
ORIGINAL_SUFFIX = ".16.png"


def phi_dataset() -> FileDataset:
    """The test DICOM: a chest-like DX image with every attribute of :data:`IDENTIFYING` and a private block."""
    from echo_model.imaging.synthetic import phantom_cxr_array, synthetic_dicom_dataset

    ds = synthetic_dicom_dataset(
        phantom_cxr_array((300, 280), dtype="uint16", seed=11), bits_stored=12,
        attributes={**IDENTIFYING, "Modality": "DX", "ViewPosition": "PA", "BodyPartExamined": "CHEST"},
    )
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID  # the file meta repeats it
    block = ds.private_block(0x0011, "ACME PHI STORE", create=True)
    block.add_new(0x01, "LO", PRIVATE_VALUES[0])
    block.add_new(0x02, "LO", PRIVATE_VALUES[1])
    block.add_new(0x03, "DA", PRIVATE_VALUES[2])
    return ds


def forbidden_spellings(ds: FileDataset) -> list[str]:
    """Every needle: the attribute values, the private values, derived spellings and the data set's own UIDs."""
    uids = [str(ds.SOPInstanceUID), str(ds.file_meta.MediaStorageSOPInstanceUID)]
    needles = [*IDENTIFYING.values(), *PRIVATE_VALUES, *DERIVED, *uids, PHI_FILE_NAME]
    return sorted(set(needles), key=str.lower)


@dataclass(frozen=True)
class Finding:
    """One needle found: where (a path relative to the scanned root, ``zip!member`` inside archives), what, how."""

    where: str
    needle: str
    how: str  # "content", "file name" or "png chunk"


def _patterns(needles: list[str]) -> list[tuple[str, re.Pattern[bytes], bool]]:
    """(needle, compiled pattern, is_long) for UTF-8 and, for long needles, UTF-16-LE."""
    out = []
    for needle in needles:
        if len(needle) >= LONG:
            for encoded in {needle.encode("utf-8"), needle.encode("utf-16-le")}:
                out.append((needle, re.compile(re.escape(encoded), re.IGNORECASE), True))
        else:
            word = rb"(?<![A-Za-z0-9])" + re.escape(needle.encode("utf-8")) + rb"(?![A-Za-z0-9])"
            out.append((needle, re.compile(word, re.IGNORECASE), False))
    return out


def scan_bytes(data: bytes, needles: list[str], *, where: str, strict_png: bool = False) -> list[Finding]:
    """Findings in one file's bytes (zips are opened and their members scanned, names included).

    ``strict_png``: a PNG must hold only IHDR/IDAT/IEND (stored and exported views); other PNGs (Gradio's
    display copies) are only searched.
    """
    from echo_model.imaging import ALLOWED_PNG_CHUNKS, png_chunk_types, png_without_pixels

    if data[:4] == b"PK\x03\x04":
        found: list[Finding] = []
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.infolist():
                inner = f"{where}!{member.filename}"
                found += _scan_name(inner, member.filename, needles)
                found += scan_bytes(archive.read(member), needles, where=inner, strict_png=True)
        return found
    patterns = _patterns(needles)
    found = []
    if data.startswith(PNG_SIGNATURE):
        allowed = {c.decode() for c in ALLOWED_PNG_CHUNKS}
        extra = sorted({c.decode("latin-1") for c in png_chunk_types(data)} - allowed)
        if strict_png and extra:
            found.append(Finding(where, ",".join(extra), "png chunk"))
        outside = png_without_pixels(data)
        hits = {n for n, p, _ in patterns if p.search(outside)}
        pixels = _png_pixel_bytes(data)
        hits |= {n for n, p, long in patterns if long and (p.search(data) or p.search(pixels))}
    else:
        hits = {n for n, p, _ in patterns if p.search(data)}
    return found + [Finding(where, n, "content") for n in sorted(hits)]


def _png_pixel_bytes(data: bytes) -> bytes:
    """The decoded pixels of a PNG as bytes, in both byte orders for 16-bit samples (empty if undecodable)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            raw = image.tobytes()
            deep = image.mode.startswith("I;16")
    except (OSError, SyntaxError, ValueError, EOFError):  # a broken PNG: its bytes are still searched as they are
        return b""
    if not deep:
        return raw
    swapped = bytearray(raw)
    swapped[0::2], swapped[1::2] = raw[1::2], raw[0::2]
    return raw + b"\x00" + bytes(swapped)


def check_original_png(data: bytes, *, where: str) -> list[Finding]:
    """A stored 16-bit original must be a 16-bit grey PNG of IHDR/IDAT/IEND only (pixels, nothing else)."""
    from echo_model.imaging import ALLOWED_PNG_CHUNKS, png_chunk_types

    if not data.startswith(PNG_SIGNATURE):
        return [Finding(where, "not a PNG", "png format")]
    found = []
    depth, colour = data[24], data[25]  # IHDR: width, height (8 bytes) from offset 16, then depth, colour type
    if (depth, colour) != (16, 0):
        found.append(Finding(where, f"bit depth {depth}, colour type {colour}", "png format"))
    extra = sorted({c.decode("latin-1") for c in png_chunk_types(data)} - {c.decode() for c in ALLOWED_PNG_CHUNKS})
    if extra:
        found.append(Finding(where, ",".join(extra), "png chunk"))
    return found


def scan_originals(root: Path, needles: list[str]) -> tuple[list[Finding], int]:
    """Check and scan every stored 16-bit original under ``root``; (findings, how many there were)."""
    found: list[Finding] = []
    paths = sorted(p for p in root.rglob(f"*{ORIGINAL_SUFFIX}") if p.is_file())
    for path in paths:
        rel, data = path.relative_to(root).as_posix(), path.read_bytes()
        found += check_original_png(data, where=rel) + scan_bytes(data, needles, where=rel, strict_png=True)
    return found, len(paths)


def _scan_name(where: str, name: str, needles: list[str]) -> list[Finding]:
    encoded = name.encode("utf-8")
    return [Finding(where, n, "file name") for n, p, _ in _patterns(needles) if p.search(encoded)]


def scan_tree(root: Path, needles: list[str], *,
              strict_png_under: tuple[str, ...] = ()) -> tuple[list[Finding], int, int]:
    """Scan every file under ``root`` (names and contents); returns (findings, files, bytes).

    PNGs whose relative path starts with one of ``strict_png_under`` must hold only IHDR/IDAT/IEND.
    """
    findings: list[Finding] = []
    files = size = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        files, size = files + 1, size + len(data)
        findings += _scan_name(rel, rel, needles)
        findings += scan_bytes(data, needles, where=rel, strict_png=rel.startswith(strict_png_under))
    return findings, files, size


@dataclass
class PhiReport:
    identifying_attributes: int
    private_values: int
    needles: int
    needles_found_in_input: int
    files_scanned: int
    bytes_scanned: int
    log_lines: int
    original_pngs: int  # stored 16-bit originals found, checked and scanned
    draft_signed: bool
    exported_records: int
    broken_upload_refused: bool
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (not self.findings and self.draft_signed and self.exported_records == 1 and self.broken_upload_refused
                and self.needles_found_in_input > 0 and self.original_pngs >= 1)


def run_phi_scan(work_dir: Path, *, max_new_tokens: int = 32) -> PhiReport:
    """Run the app on the PHI DICOM through every endpoint that stores, shows or exports, then scan everything."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from echo_model.imaging.synthetic import dicom_bytes

    ds = phi_dataset()
    needles = forbidden_spellings(ds)
    inputs = work_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    dicom = inputs / PHI_FILE_NAME
    dicom.write_bytes(dicom_bytes(ds))
    broken = inputs / PHI_FILE_NAME.replace(".dcm", "_2.dcm")
    broken.write_bytes(b"<!DOCTYPE html><html>session expired for Doe^John</html>")
    input_hits, _, _ = scan_tree(inputs, needles)
    server, downloads = work_dir / "server", work_dir / "client-downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with start_app(server, auth="radiologist:phi-scan-pw", log_level="DEBUG") as app:
        client = Client(app.url, auth=("radiologist", "phi-scan-pw"), verbose=False, download_files=str(downloads))
        client.predict([handle_file(str(dicom))], "", api_name="/upload_views")
        outputs = client.predict([handle_file(str(dicom))], indication="cough for two weeks",
                                 max_new_tokens=max_new_tokens, api_name="/generate")
        draft_id = str(outputs[9])
        client.predict(draft_id, "Lungs are clear.", "No acute disease.", ["style"], "checked", api_name="/save_edit")
        status = client.predict(draft_id, "Lungs are clear.", "No acute disease.", [], "", None, True,  # sign anyway
                               api_name="/sign")[0]
        client.predict(draft_id, "Compared with the prior study.", api_name="/add_addendum")
        client.predict(draft_id, api_name="/open_draft")
        client.predict(api_name="/history")
        client.predict("", api_name="/audit")
        _, export_status = client.predict(None, None, api_name="/export_corrections")
        try:
            client.predict([handle_file(str(broken))], api_name="/generate")
            refused = False
        except AppError:
            refused = True
        findings, files, size = scan_tree(server, needles, strict_png_under=("data/",))
    after, files_after, size_after = scan_tree(server, needles, strict_png_under=("data/",))  # the complete log
    originals, original_pngs = scan_originals(server / "data", needles)
    downloaded, files_dl, size_dl = scan_tree(downloads, needles)
    log_text = app.log_path.read_text(encoding="utf-8", errors="replace")
    exported = re.search(r"Exported (\d+) signed", str(export_status))
    return PhiReport(
        identifying_attributes=sum(1 for keyword in IDENTIFYING if keyword in ds), private_values=len(PRIVATE_VALUES),
        needles=len(needles), needles_found_in_input=len({f.needle for f in input_hits}),
        files_scanned=files + files_after + files_dl, bytes_scanned=size + size_after + size_dl,
        log_lines=len(log_text.splitlines()), original_pngs=original_pngs, draft_signed="Signed" in str(status),
        exported_records=int(exported.group(1)) if exported else 0, broken_upload_refused=refused,
        findings=sorted(set(findings + after + [Finding(f"data/{f.where}", f.needle, f.how) for f in originals]
                            + [Finding(f"client/{f.where}", f.needle, f.how) for f in downloaded]),
                        key=lambda f: (f.where, f.needle)),
    )


def summary(report: PhiReport) -> str:
    lines = [
        (f"input: {report.identifying_attributes} identifying attributes + {report.private_values} private values, "
         f"file name {PHI_FILE_NAME}; {report.needles} spellings searched, {report.needles_found_in_input} of them "
         "found in the input files (the scanner works)"),
        (f"app: draft signed {report.draft_signed}, exported records {report.exported_records}, "
         f"broken upload with an identifying name refused {report.broken_upload_refused}, "
         f"log {report.log_lines} lines (DEBUG)"),
        (f"scanned {report.files_scanned} files, {report.bytes_scanned / 1e6:.2f} MB (database + WAL, PNGs, upload "
         "cache, export staging, log, downloaded export zip)"),
        f"16-bit originals stored, checked (16-bit grey, IHDR/IDAT/IEND only) and scanned: {report.original_pngs}",
        f"findings: {len(report.findings)}",
    ]
    lines += [f"  {f.where}: {f.needle!r} ({f.how})" for f in report.findings[:50]]
    lines.append("RESULT: " + ("PASS" if report.ok else "FAIL"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "reliability")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="echo-phi-") as tmp:
        report = run_phi_scan(Path(tmp))
    print(summary(report))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "phi.json").write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=1) + "\n",
                                       encoding="utf-8")
    print(f"wrote {args.out / 'phi.json'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
