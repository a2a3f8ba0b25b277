"""The reliability inputs: build each one, load it, print what it produced as a Markdown table.

Usage::

    python scripts/input_table.py [--keep FOLDER]

Each case is a file a user could upload: broken or hostile ones that must be refused with a
message naming the problem (zero bytes, truncated PNG/JPEG, text or HTML named ``.png``, a
decompression bomb, a 20000 x 20000 image, DICOM without pixels, with absurd Rows/Columns or an
unsupported transfer syntax) and questionable ones that must load with a warning (CT/MR DICOM,
a colour photo, multi-frame DICOM, burned-in annotation). The file is written under the case's
upload name and loaded with ``echo_model.imaging.load_image``, which is what the app runs on an
upload; the app shows the same message (``tests/test_refusals.py`` checks that through the
handlers and through ``gradio_client`` against a served app). The table goes into
``docs/reliability.md``. Files are built in a temporary folder unless ``--keep`` names one.
"""

from __future__ import annotations

import argparse
import io
import re
import struct
import sys
import tempfile
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from echo_model.imaging import (
    CorruptImageError,
    EmptyFileError,
    ImageInputError,
    ImageTooLargeError,
    NoPixelDataError,
    UnsupportedFormatError,
    UnsupportedTransferSyntaxError,
    load_image,
)
from echo_model.imaging.synthetic import (
    colourful_noise,
    dicom_bytes,
    phantom_cxr,
    phantom_cxr_array,
    synthetic_dicom_dataset,
)

REFUSED, WARNED, ACCEPTED = "refused", "warned", "accepted"


@dataclass(frozen=True)
class InputCase:
    """One uploaded file and what must happen to it.

    ``pattern`` is a regular expression that the refusal message (``refused``) or one of the
    warnings (``warned``) must match; ``error`` is the refusal's class.
    """

    key: str
    description: str
    file_name: str
    build: Callable[[], bytes]
    expect: str
    pattern: str = ""
    error: type[ImageInputError] | None = None


@dataclass(frozen=True)
class CaseResult:
    """What loading a case's file gave: the outcome, the error class, the message or the warnings."""

    case: InputCase
    outcome: str
    error: str | None
    messages: tuple[str, ...]

    @property
    def as_expected(self) -> bool:
        if self.outcome != self.case.expect:
            return False
        if self.case.expect == REFUSED:
            return self.error == self.case.error.__name__ and bool(re.search(self.case.pattern, self.messages[0]))
        if self.case.expect == WARNED:
            return any(re.search(self.case.pattern, m) for m in self.messages)
        return not self.messages


# --- builders -----------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def chest_png() -> bytes:
    """A phantom PA chest radiograph, 320 x 300: the valid upload of the suite."""
    return _encode(phantom_cxr((320, 300)), "PNG")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def blank_png(width: int, height: int) -> bytes:
    """A complete, valid 8-bit grey PNG of zeros, built without holding its pixels.

    Why not Pillow: a 20000 x 20000 image is 400 MB decoded. The zlib stream repeats one
    full-flushed segment of 100 zero rows (identical output, since a full flush resets the
    compressor), and the Adler-32 of n zero bytes is ``(n mod 65521) << 16 | 1``.
    """
    rows = 100
    if height % rows:
        raise ValueError(f"height must be a multiple of {rows}, got {height}")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(bytes((width + 1) * rows)) + compressor.flush(zlib.Z_FULL_FLUSH)
    raw_length = (width + 1) * height
    stream = (b"\x78\xda" + segment * (height // rows) + compressor.flush(zlib.Z_FINISH)
              + (((raw_length % 65521) << 16) | 1).to_bytes(4, "big"))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream) + _png_chunk(b"IEND", b"")


def png_declaring(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR (CRC fixed) claims ``width`` x ``height``: a decompression bomb's header."""
    data = bytearray(_encode(phantom_cxr((64, 64)), "PNG"))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _dicom(**attributes: object) -> bytes:
    pixels = phantom_cxr_array((300, 320), dtype="uint16")
    return dicom_bytes(synthetic_dicom_dataset(pixels, bits_stored=12, attributes=attributes))


def dicom_report_without_pixels() -> bytes:
    """A Basic Text SR object: a DICOM file that holds a report, not an image."""
    ds = synthetic_dicom_dataset(phantom_cxr_array((64, 64)), bits_stored=8,
                                 attributes={"Modality": "SR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.11"})
    del ds.PixelData
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return dicom_bytes(ds)


def dicom_compressed(transfer_syntax: str, frame: bytes) -> bytes:
    ds = synthetic_dicom_dataset(phantom_cxr_array((64, 64)), bits_stored=8, transfer_syntax=transfer_syntax,
                                 encapsulated_frames=[frame])
    return dicom_bytes(ds)


def j2k_frame_declaring(width: int, height: int) -> bytes:
    """A JPEG 2000 codestream of a 64 x 64 image whose SIZ marker claims ``width`` x ``height``."""
    buffer = io.BytesIO()
    phantom_cxr((64, 64)).save(buffer, format="JPEG2000", no_jp2=True)
    data = bytearray(buffer.getvalue())
    struct.pack_into(">II", data, 8, width, height)  # Xsiz, Ysiz right after SOC, SIZ, Lsiz, Rsiz
    return bytes(data)


def dicom_multiframe() -> bytes:
    import numpy as np

    frame = phantom_cxr_array((300, 320), dtype="uint16")
    return dicom_bytes(synthetic_dicom_dataset(np.stack([frame, frame]), bits_stored=12))


MPEG2_MAIN_PROFILE = "1.2.840.10008.1.2.4.100"
PRIVATE_TRANSFER_SYNTAX = "1.2.826.0.1.3680043.9.9999.1"

CASES: tuple[InputCase, ...] = (
    InputCase("empty", "zero-byte file", "empty.png", lambda: b"", REFUSED, r"empty \(0 bytes\)", EmptyFileError),
    InputCase("truncated_png", "truncated PNG (first 3000 bytes of a valid one)", "cut.png",
              lambda: chest_png()[:3000], REFUSED, "PNG is damaged or truncated", CorruptImageError),
    InputCase("truncated_jpeg", "truncated JPEG (first 2000 bytes of a valid one)", "cut.jpg",
              lambda: _encode(phantom_cxr((320, 300)), "JPEG")[:2000], REFUSED, "JPEG is damaged or truncated",
              CorruptImageError),
    InputCase("text_as_png", "text file renamed `.png`", "notes.png", lambda: b"Findings: normal.\n" * 20, REFUSED,
              "the content is a text file", UnsupportedFormatError),
    InputCase("html", "HTML page (an expired login page) saved as `.png`", "login.png",
              lambda: b"<!DOCTYPE html><html><body>Session expired</body></html>", REFUSED,
              "the content is an HTML page", UnsupportedFormatError),
    InputCase("bomb", "decompression bomb: a 64 x 64 PNG whose header claims 65535 x 65535", "bomb.png",
              lambda: png_declaring(65535, 65535), REFUSED, r"4294\.8 megapixels.*decompression-bomb guard",
              ImageTooLargeError),
    InputCase("huge", "20000 x 20000 PNG, complete and valid (400 KB file, 400 MB decoded)", "huge.png",
              lambda: blank_png(20000, 20000), REFUSED, r"20000x20000 = 400\.0 megapixels", ImageTooLargeError),
    InputCase("dicom_no_pixels", "DICOM without pixel data (a Basic Text SR report)", "report.dcm",
              dicom_report_without_pixels, REFUSED, r"no pixel data \(a Basic Text SR Storage object\)",
              NoPixelDataError),
    InputCase("dicom_over_limit", "DICOM declaring Rows x Columns = 30000 x 30000", "giant.dcm",
              lambda: _dicom(Rows=30000, Columns=30000), REFUSED, r"900\.0 megapixels per frame",
              ImageTooLargeError),
    InputCase("dicom_absurd_geometry", "DICOM declaring 3000 x 3000 but holding 320 x 300 pixels", "absurd.dcm",
              lambda: _dicom(Rows=3000, Columns=3000), REFUSED, "but holds only", CorruptImageError),
    InputCase("dicom_j2k_bomb", "DICOM (64 x 64) whose JPEG 2000 frame declares 60000 x 60000", "j2k_bomb.dcm",
              lambda: dicom_compressed("1.2.840.10008.1.2.4.90", j2k_frame_declaring(60000, 60000)), REFUSED,
              "compressed frame declares 60000x60000", ImageTooLargeError),
    InputCase("dicom_mpeg2", "DICOM with an unsupported transfer syntax (MPEG-2 video)", "video.dcm",
              lambda: dicom_compressed(MPEG2_MAIN_PROFILE, bytes(64)), REFUSED, "which pydicom cannot decode",
              UnsupportedTransferSyntaxError),
    InputCase("dicom_private_syntax", "DICOM with a private transfer syntax UID", "private.dcm",
              lambda: dicom_compressed(PRIVATE_TRANSFER_SYNTAX, bytes(64)), REFUSED,
              r"not a standard DICOM transfer syntax\), which pydicom cannot decode",
              UnsupportedTransferSyntaxError),
    InputCase("dicom_ct", "CT DICOM", "ct.dcm", lambda: _dicom(Modality="CT"), WARNED,
              r"Modality is CT \(computed tomography\)"),
    InputCase("dicom_mr", "MR DICOM", "mr.dcm", lambda: _dicom(Modality="MR"), WARNED,
              r"Modality is MR \(magnetic resonance\)"),
    InputCase("photo", "non-chest colour photo (JPEG)", "holiday.jpg",
              lambda: _encode(colourful_noise((320, 240)), "JPEG"), WARNED, "does not look like a chest radiograph"),
    InputCase("dicom_multiframe", "multi-frame DICOM (2 frames)", "cine.dcm", dicom_multiframe, WARNED,
              "holds 2 frames; only the first is used"),
    InputCase("dicom_burned_in", "DICOM with Burned In Annotation = YES", "burned.dcm",
              lambda: _dicom(BurnedInAnnotation="YES"), WARNED, "burned into the pixels"),
    InputCase("chest_png", "phantom PA chest radiograph (PNG), the control", "pa.png", chest_png, ACCEPTED),
)


# --- running ----------------------------------------------------------------------------------


def write_case(case: InputCase, folder: Path) -> Path:
    """Write the case's bytes under its upload name in ``folder``."""
    path = folder / case.file_name
    path.write_bytes(case.build())
    return path


def run_case(case: InputCase, path: Path) -> CaseResult:
    """Load the file as the app does and record what came out."""
    try:
        loaded = load_image(path)
    except ImageInputError as err:
        return CaseResult(case=case, outcome=REFUSED, error=type(err).__name__, messages=(str(err),))
    outcome = WARNED if loaded.warnings else ACCEPTED
    return CaseResult(case=case, outcome=outcome, error=None, messages=tuple(loaded.warnings))


def run_cases(cases: Sequence[InputCase], folder: Path) -> list[CaseResult]:
    return [run_case(case, write_case(case, folder)) for case in cases]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(results: Sequence[CaseResult]) -> str:
    """``| input | file | outcome | message |``: the refusal message, or the warnings one per line."""
    lines = ["| input | uploaded as | outcome | message shown (refusal, or warnings) |", "| --- | --- | --- | --- |"]
    for result in results:
        outcome = f"refused (`{result.error}`)" if result.outcome == REFUSED else result.outcome
        message = "<br>".join(_cell(m) for m in result.messages) or "–"
        lines.append(f"| {_cell(result.case.description)} | `{result.case.file_name}` | {outcome} | {message} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="write the input files into this folder and keep them")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="pydicom")  # its notes on the hostile files; the table says the rest
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        results = run_cases(CASES, args.keep)
    else:
        with tempfile.TemporaryDirectory() as folder:
            results = run_cases(CASES, Path(folder))
    print(markdown_table(results))
    unexpected = [r.case.key for r in results if not r.as_expected]
    if unexpected:
        print(f"\nNOT AS EXPECTED: {', '.join(unexpected)}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
