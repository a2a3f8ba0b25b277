"""Format detection from content (magic bytes) and header-only size reading.

Why not trust the extension: browsers and PACS exports routinely mislabel files (``.png`` that
is HTML from a login page, ``.jpg`` that is DICOM, DICOM files with no extension at all). The
declared size is read from the header here, before Pillow or pydicom decode anything, so a
decompression bomb is refused without allocating its pixels.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DeclaredRaster",
    "SourceFormat",
    "describe_unsupported",
    "detect_format",
    "read_j2k_header",
    "read_jpeg_header",
    "read_png_header",
]

SourceFormat = Literal["png", "jpeg", "dicom", "dicom_no_preamble"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
#: JPEG 2000 codestream start: SOC marker then the SIZ marker that declares the image size.
J2K_CODESTREAM_START = b"\xff\x4f\xff\x51"
DICOM_MAGIC = b"DICM"

# Start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})

_KNOWN_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split()
)

# (signature, offset, description) of formats we recognise only to refuse them helpfully.
_OTHER_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF87a", 0, "a GIF image"),
    (b"GIF89a", 0, "a GIF image"),
    (b"BM", 0, "a BMP image"),
    (b"II*\x00", 0, "a TIFF image"),
    (b"MM\x00*", 0, "a TIFF image"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", 0, "a JPEG 2000 codestream"),
    (b"%PDF", 0, "a PDF document"),
    (b"PK\x03\x04", 0, "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", 0, "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", 0, "a 7-Zip archive"),
    (b"Rar!", 0, "a RAR archive"),
    (b"\x7fELF", 0, "an executable"),
    (b"MZ", 0, "a Windows executable"),
    (b"ftypheic", 4, "a HEIC photo"),
    (b"ftypheix", 4, "a HEIC photo"),
    (b"ftypmif1", 4, "a HEIF photo"),
    (b"ftypavif", 4, "an AVIF image"),
)


@dataclass(frozen=True)
class DeclaredRaster:
    """What a PNG/JPEG header declares, read without decoding pixels."""

    width: int
    height: int
    bit_depth: int


def detect_format(data: bytes) -> SourceFormat | None:
    """Return the supported format the bytes are in, or None when they are something else."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if data[128:132] == DICOM_MAGIC:
        return "dicom"
    if data.startswith(DICOM_MAGIC) or _looks_like_bare_dicom(data):
        return "dicom_no_preamble"
    return None


def _looks_like_bare_dicom(data: bytes) -> bool:
    """True for a DICOM data set stored without the 128-byte preamble (old ACR-NEMA style).

    Such files start with a little-endian tag of group 0002 or 0008 followed either by an
    explicit VR or by a 4-byte length that fits in the file.
    """
    if len(data) < 12 or data[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    if data[4:6] in _KNOWN_VRS:
        return True
    length = int(struct.unpack_from("<I", data, 4)[0])
    return length < min(len(data), 1024)


def describe_unsupported(data: bytes) -> str:
    """Say in words what unsupported content looks like, for the refusal message."""
    for signature, offset, description in _OTHER_SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return description
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WebP image"
    head = data[:2048]
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if lowered.startswith((b"<!doctype html", b"<html")) or b"<html" in lowered[:512]:
        return "an HTML page"
    if lowered.startswith((b"<?xml", b"<svg")):
        return "an XML/SVG document"
    if _is_mostly_text(head):
        return "a text file"
    return "an unrecognised binary file"


def _is_mostly_text(head: bytes) -> bool:
    """True when the bytes decode as UTF-8 text with almost no control characters."""
    try:
        text = head.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte character cut at the end is fine
            return False
        text = head[: exc.start].decode("utf-8")
    if not text:
        return False
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\r\n\f")
    return controls <= len(text) // 100


def read_png_header(data: bytes) -> DeclaredRaster | None:
    """Width, height and bit depth from the IHDR chunk, or None when there is no valid IHDR."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, bit_depth = struct.unpack_from(">IIB", data, 16)
    return DeclaredRaster(width=width, height=height, bit_depth=bit_depth)


def read_jpeg_header(data: bytes) -> DeclaredRaster | None:
    """Width, height and sample precision from the first start-of-frame marker.

    Walks the marker segments (each ``FF xx`` followed by a big-endian length) until an SOF;
    returns None when the scan data or the end of the file comes first.
    """
    pos = 2
    size = len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _JPEG_SOF_MARKERS:
            if pos + 9 > size:
                return None
            precision, height, width = struct.unpack_from(">BHH", data, pos + 4)
            return DeclaredRaster(width=width, height=height, bit_depth=precision)
        if length < 2:
            return None
        pos += 2 + length
    return None


def read_j2k_header(data: bytes, *, search_bytes: int = 4096) -> DeclaredRaster | None:
    """Width, height and first-component precision from a JPEG 2000 SIZ marker, or None.

    The codestream may be bare (it starts with SOC + SIZ) or wrapped in JP2 boxes, in which case
    the SIZ is looked for in the first ``search_bytes``. The size is the reference grid minus its
    offset (``Xsiz - XOsiz`` by ``Ysiz - YOsiz``), which is what a decoder allocates.
    """
    start = data.find(J2K_CODESTREAM_START, 0, search_bytes)
    siz = start + 4  # Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz, Ssiz...
    if start < 0 or siz + 39 > len(data):
        return None
    x_size, y_size, x_offset, y_offset = struct.unpack_from(">IIII", data, siz + 4)
    precision = (data[siz + 38] & 0x7F) + 1
    return DeclaredRaster(width=max(x_size - x_offset, 0), height=max(y_size - y_offset, 0), bit_depth=precision)
