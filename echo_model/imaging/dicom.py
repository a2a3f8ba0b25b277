"""DICOM decoding through pydicom 3 (``pydicom.pixels``) into a grey radiograph.

Order of operations, each step before the costlier next one:

1. parse the header (``dcmread``) and refuse objects without pixel data;
2. check the declared geometry (Rows x Columns, frames) against :class:`ImageLimits` and,
   for uncompressed data, that the declared pixels are actually present (absurd headers);
3. check that a decoder for the transfer syntax is installed, else name the ``pip install``;
4. decode the first frame only, then Modality LUT -> VOI LUT or window -> 8 bit, and invert
   MONOCHROME1 so that bone is always bright.

Only allow-listed, coded attributes leave this module (see :mod:`.types`); warnings never quote
a header value except sanitised code strings (Modality, Body Part).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragments
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array

from .errors import (
    CorruptImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    NoPixelDataError,
    UnsupportedFormatError,
    UnsupportedTransferSyntaxError,
)
from .original import encode_original
from .sniff import DeclaredRaster, read_j2k_header, read_jpeg_header
from .tone import VOI_FUNCTIONS, Window, data_range_window, window_to_uint8
from .types import DecodedPicture, ImageLimits, MetadataValue
from .vocab import BODY_PARTS, MODALITIES, VIEW_POSITIONS, coded, normalise_code

__all__ = ["RADIOGRAPHY_MODALITIES", "decode_dicom", "install_hint"]

#: Modalities of projection radiography that ECHO was trained on.
RADIOGRAPHY_MODALITIES = frozenset({"CR", "DX"})
_CHEST_WORDS = ("CHEST", "THORAX", "THORAC", "LUNG", "TORAX", "THORAK", "PECHO", "TORACE")
_MODALITY_NAMES = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "MG": "mammography",
    "NM": "nuclear medicine",
    "PT": "PET",
    "XA": "angiography",
    "RF": "fluoroscopy",
    "OT": "other",
    "SC": "secondary capture",
    "RG": "radiographic imaging",
    "IO": "intra-oral radiography",
    "PX": "panoramic radiography",
    "OP": "ophthalmic photography",
    "XC": "external camera photography",
    "SM": "slide microscopy",
}
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
_COLOUR = frozenset(
    {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR"}
)

_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
_INSTALL_HINTS: dict[str, str] = {
    dcm_uid.JPEGBaseline8Bit: _LIBJPEG,
    dcm_uid.JPEGExtended12Bit: _LIBJPEG,
    dcm_uid.JPEGLossless: _LIBJPEG,
    dcm_uid.JPEGLosslessSV1: _LIBJPEG,
    dcm_uid.JPEGLSLossless: _LIBJPEG,
    dcm_uid.JPEGLSNearLossless: _LIBJPEG,
    dcm_uid.JPEG2000Lossless: _OPENJPEG,
    dcm_uid.JPEG2000: _OPENJPEG,
    dcm_uid.HTJ2KLossless: _OPENJPEG,
    dcm_uid.HTJ2KLosslessRPCL: _OPENJPEG,
    dcm_uid.HTJ2K: _OPENJPEG,
    dcm_uid.RLELossless: "pylibjpeg pylibjpeg-rle",
}

#: Compressed syntaxes whose frames start with a header we can read before decoding.
_JPEG_SYNTAXES = frozenset(
    {dcm_uid.JPEGBaseline8Bit, dcm_uid.JPEGExtended12Bit, dcm_uid.JPEGLossless, dcm_uid.JPEGLosslessSV1}
)
_J2K_SYNTAXES = frozenset(
    {dcm_uid.JPEG2000Lossless, dcm_uid.JPEG2000, dcm_uid.HTJ2KLossless, dcm_uid.HTJ2KLosslessRPCL, dcm_uid.HTJ2K}
)
#: Python object reprs that decoders put in messages ("<_io.BytesIO object at 0x7f...>"): noise to a user.
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-f]+>")
#: Image Pixel attributes without which the pixel data cannot be interpreted (the others have defaults).
_REQUIRED_PIXEL_ATTRIBUTES: dict[str, str] = {
    "Rows": "Rows",
    "Columns": "Columns",
    "BitsAllocated": "Bits Allocated",
    "PhotometricInterpretation": "Photometric Interpretation",
}


def install_hint(transfer_syntax: str) -> str:
    """The ``pip install`` arguments that add a pydicom decoder for ``transfer_syntax``."""
    return _INSTALL_HINTS.get(str(transfer_syntax), f"{_LIBJPEG} pylibjpeg-openjpeg")


def decode_dicom(data: bytes, *, name: str, limits: ImageLimits, has_preamble: bool = True) -> DecodedPicture:
    """Decode DICOM bytes (already sniffed) into a grey picture plus gating warnings."""
    warnings: list[str] = []
    if not has_preamble:
        warnings.append("the DICOM file has no standard 128-byte preamble; it was read anyway.")
    ds = _read_dataset(data, name, has_preamble=has_preamble)
    _require_pixel_data(ds, name)
    geometry = _Geometry.from_dataset(ds, name)
    geometry.check_limits(name, limits)
    transfer_syntax = _transfer_syntax(ds)
    _require_decoder(transfer_syntax, name)
    if transfer_syntax.is_compressed:
        _check_compressed_frame(ds, transfer_syntax, geometry=geometry, name=name, limits=limits)
    else:
        geometry.check_native_length(len(ds.PixelData or b""), name)
    warnings.extend(_gating_warnings(ds, geometry.frames))
    frame = _decode_first_frame(ds, geometry, name)
    grey, colour, metadata = _render(frame, ds, geometry, warnings)
    original = metadata.pop("_original", None)
    metadata.update(
        source_format="dicom",
        modality=coded(ds.get("Modality"), MODALITIES),
        view_position=coded(ds.get("ViewPosition"), VIEW_POSITIONS),
        photometric_interpretation=geometry.photometric,
        bits_stored=geometry.bits_stored,
        frames=geometry.frames,
    )
    return DecodedPicture(grey=grey, metadata=metadata, warnings=warnings, colour=colour, original=original)


def _read_dataset(data: bytes, name: str, *, has_preamble: bool) -> Dataset:
    if data.startswith(b"DICM"):  # preamble stripped but file meta kept
        data, has_preamble = bytes(128) + data, True
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except Exception as exc:  # pydicom raises many types on malformed input
        raise CorruptImageError(name, f"the DICOM header cannot be parsed ({_short(exc)})") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta = ds.file_meta if isinstance(ds.file_meta, FileMetaDataset) else FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            dcm_uid.ImplicitVRLittleEndian
            if implicit
            else (dcm_uid.ExplicitVRLittleEndian if little is not False else dcm_uid.ExplicitVRBigEndian)
        )
    return ds


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def _require_pixel_data(ds: Dataset, name: str) -> None:
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise UnsupportedFormatError(
            name, "the DICOM holds floating-point pixel data, which is not a radiograph."
        )
    if "PixelData" not in ds:
        kind = _known_sop_class(ds)
        raise NoPixelDataError(name, f"the DICOM file has no pixel data{kind}; there is no image to read.")
    if not ds["PixelData"].value:
        raise NoPixelDataError(name, "the DICOM Pixel Data element is empty; there is no image to read.")


def _known_sop_class(ds: Dataset) -> str:
    """Return ``" (a <standard SOP class name> object)"`` or ``""``; never a non-standard value."""
    sop = dcm_uid.UID(str(ds.get("SOPClassUID", "")).strip())
    if not sop or not sop.is_valid or sop.name == str(sop):
        return ""
    return f" (a {sop.name} object)"


class _Geometry:
    """Declared image geometry from the Image Pixel module, validated."""

    def __init__(
        self,
        *,
        rows: int,
        columns: int,
        frames: int,
        samples: int,
        bits_allocated: int,
        bits_stored: int,
        photometric: str,
    ) -> None:
        self.rows = rows
        self.columns = columns
        self.frames = frames
        self.samples = samples
        self.bits_allocated = bits_allocated
        self.bits_stored = bits_stored
        self.photometric = photometric

    @classmethod
    def from_dataset(cls, ds: Dataset, name: str) -> _Geometry:
        missing = [label for keyword, label in _REQUIRED_PIXEL_ATTRIBUTES.items() if ds.get(keyword) in (None, "")]
        if missing:
            raise CorruptImageError(
                name,
                f"the DICOM has pixel data but no {', '.join(missing)}; without them the image cannot be read.",
            )
        try:
            rows, columns = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames") or 1)
            samples = int(ds.get("SamplesPerPixel") or 1)
            bits_allocated = int(ds.BitsAllocated)
            bits_stored = int(ds.get("BitsStored") or bits_allocated)
            photometric = str(ds.PhotometricInterpretation).strip().upper()
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CorruptImageError(
                name, f"the DICOM image description is incomplete or invalid ({_short(exc)})"
            ) from exc
        if rows < 1 or columns < 1 or frames < 1:
            raise CorruptImageError(
                name, f"the DICOM declares an empty image (Rows {rows}, Columns {columns}, frames {frames})."
            )
        if bits_allocated not in (1, 8, 16, 32, 64) or not 1 <= bits_stored <= bits_allocated:
            raise CorruptImageError(
                name,
                f"the DICOM declares invalid bit depths (allocated {bits_allocated}, stored {bits_stored}).",
            )
        if photometric not in _MONOCHROME | _COLOUR or samples not in (1, 3):
            raise UnsupportedFormatError(
                name,
                f"unsupported DICOM photometric interpretation "
                f"{coded(photometric, _MONOCHROME | _COLOUR) or '(unrecognised value)'} with {samples} samples per pixel.",
            )
        return cls(
            rows=rows,
            columns=columns,
            frames=frames,
            samples=samples,
            bits_allocated=bits_allocated,
            bits_stored=bits_stored,
            photometric=photometric,
        )

    def check_limits(self, name: str, limits: ImageLimits) -> None:
        """Refuse absurd sizes before pydicom allocates anything."""
        pixels = self.rows * self.columns
        if pixels > limits.max_pixels:
            raise ImageTooLargeError(
                name,
                f"the DICOM declares {self.columns}x{self.rows} = {pixels / 1e6:.1f} megapixels per frame, "
                f"over the limit of {limits.max_pixels / 1e6:.1f} megapixels.",
            )
        if self.frames > limits.max_frames:
            raise ImageTooLargeError(
                name, f"the DICOM declares {self.frames} frames, over the limit of {limits.max_frames}."
            )
        if min(self.rows, self.columns) < limits.min_side:
            raise ImageTooSmallError(
                name,
                f"the image is only {self.columns}x{self.rows} pixels; at least {limits.min_side} pixels "
                "per side are needed.",
            )

    def expected_native_bytes(self) -> int:
        """Bytes that uncompressed pixel data must hold for the declared geometry."""
        values = self.rows * self.columns * self.frames * self.samples
        if self.photometric == "YBR_FULL_422":
            values = values * 2 // 3
        if self.bits_allocated == 1:
            return (values + 7) // 8
        return values * (self.bits_allocated // 8)

    def check_native_length(self, actual: int, name: str) -> None:
        expected = self.expected_native_bytes()
        if actual < expected:
            raise CorruptImageError(
                name,
                f"the DICOM declares {self.columns}x{self.rows} pixels x {self.frames} frame(s) at "
                f"{self.bits_allocated} bits ({expected} bytes) but holds only {actual} bytes of pixel data.",
            )


def _transfer_syntax(ds: Dataset) -> dcm_uid.UID:
    return dcm_uid.UID(str(ds.file_meta.TransferSyntaxUID))


def _require_decoder(transfer_syntax: dcm_uid.UID, name: str) -> None:
    """Refuse, with the fix, a compression for which no pydicom plugin is installed."""
    if not transfer_syntax.is_valid:
        label = repr(str(transfer_syntax))
    elif transfer_syntax.name == str(transfer_syntax):  # not in pydicom's dictionary: a private UID
        label = f"{transfer_syntax} (not a standard DICOM transfer syntax)"
    else:
        label = f"{transfer_syntax.name} ({transfer_syntax})"
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntaxError(
            name,
            f"its pixel data use the transfer syntax {label}, which pydicom cannot decode; "
            "please export the image uncompressed (Explicit VR Little Endian) or as PNG.",
        ) from exc
    if not decoder.is_available:
        raise UnsupportedTransferSyntaxError(
            name,
            f"its pixel data are compressed as {label} and no decoder for it is installed; "
            f"run `pip install {install_hint(transfer_syntax)}` (or `pip install python-gdcm`).",
        )


def _check_compressed_frame(
    ds: Dataset, transfer_syntax: dcm_uid.UID, *, geometry: _Geometry, name: str, limits: ImageLimits
) -> None:
    """Check what the first compressed frame itself declares, before a decoder allocates it.

    Why: decoders size their output from the JPEG / JPEG 2000 header inside the frame, not from
    Rows x Columns, so a frame declaring 60000x60000 inside a 512x512 DICOM is a decompression bomb
    that the DICOM header check cannot see. And Pillow, often the only JPEG plugin, cannot read
    12-bit JPEG; saying so with the fix is better than its failure after a decode attempt.
    Frames whose header cannot be read are left to the decoder, which reports them as corrupt.
    """
    if transfer_syntax in _JPEG_SYNTAXES:
        reader = read_jpeg_header
    elif transfer_syntax in _J2K_SYNTAXES:
        reader = read_j2k_header
    else:
        return
    fragment = _first_fragment(ds.PixelData)
    header: DeclaredRaster | None = reader(fragment) if fragment else None
    if header is None:
        return
    pixels = header.width * header.height
    if pixels > limits.max_pixels:
        raise ImageTooLargeError(
            name,
            f"its compressed frame declares {header.width}x{header.height} = {pixels / 1e6:.1f} megapixels "
            f"(the DICOM header says {geometry.columns}x{geometry.rows}), over the limit of {limits.max_pixels / 1e6:.1f} "
            "megapixels (decompression-bomb guard).",
        )
    plugins = set(get_decoder(transfer_syntax).available_plugins)
    if transfer_syntax in _JPEG_SYNTAXES and header.bit_depth > 8 and plugins <= {"pillow"}:
        raise UnsupportedTransferSyntaxError(
            name,
            f"its pixel data are {header.bit_depth}-bit {transfer_syntax.name} ({transfer_syntax}), which the "
            f"installed decoder (Pillow) cannot read; run `pip install {install_hint(transfer_syntax)}` "
            "(or `pip install python-gdcm`).",
        )


def _first_fragment(pixel_data: bytes) -> bytes | None:
    """The first fragment after the Basic Offset Table item, or None when the items cannot be parsed."""
    try:
        fragments = generate_fragments(pixel_data)
        next(fragments, None)  # the Basic Offset Table, often empty
        return next(fragments, None)
    except ValueError:
        return None


def _gating_warnings(ds: Dataset, frames: int) -> Iterable[str]:
    """Warn (never refuse) about DICOM content that may not be a chest radiograph."""
    raw_modality = normalise_code(ds.get("Modality"))
    modality = coded(raw_modality, MODALITIES)
    if raw_modality is None:
        yield "the DICOM does not state its Modality; it could not be confirmed as a radiograph (CR/DX)."
    elif modality is None:
        yield "the DICOM Modality is not a recognised code; it could not be confirmed as CR/DX radiography."
    elif modality not in RADIOGRAPHY_MODALITIES:
        label = f"{modality} ({_MODALITY_NAMES[modality]})" if modality in _MODALITY_NAMES else modality
        yield (
            f"the DICOM Modality is {label}, not CR/DX radiography; ECHO drafts reports for chest "
            "radiographs only."
        )
    raw_body_part = normalise_code(ds.get("BodyPartExamined"))
    if raw_body_part is not None and not any(word in raw_body_part for word in _CHEST_WORDS):
        body_part = coded(raw_body_part, BODY_PARTS) or "an unrecognised value"
        yield f"the DICOM Body Part Examined is {body_part}, not chest."
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        yield (
            "the DICOM says annotations are burned into the pixels (Burned In Annotation = YES); they may "
            "show patient identifiers that header de-identification cannot remove."
        )
    if frames > 1:
        yield f"the DICOM holds {frames} frames; only the first is used."


def _decode_first_frame(ds: Dataset, geometry: _Geometry, name: str) -> np.ndarray:
    try:
        if geometry.frames > 1:
            return pixel_array(ds, index=0)
        return pixel_array(ds)
    except Exception as exc:  # decoder plugins raise RuntimeError/ValueError/OSError...
        raise CorruptImageError(name, f"the DICOM pixel data cannot be decoded ({_decoder_reason(exc)})") from exc


def _decoder_reason(exc: BaseException) -> str:
    """What the decoder said, without pydicom's "exceptions were raised by all available plugins:" preamble.

    pydicom puts one line per plugin under that header ("  pillow: broken data stream ..."); the first
    line alone tells the user nothing.
    """
    text = _OBJECT_REPR.sub("", str(exc))
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return "; ".join(lines[1:])[:200]
    return (lines[0] if lines else type(exc).__name__)[:160]


def _render(
    frame: np.ndarray, ds: Dataset, geometry: _Geometry, warnings: list[str]
) -> tuple[Image.Image, Image.Image | None, dict[str, MetadataValue]]:
    """8-bit grey (bone bright), the RGB original of colour data, and the metadata; the originals of a deep
    monochrome image travel in ``metadata["_original"]`` (popped by :func:`decode_dicom`)."""
    if geometry.photometric in _MONOCHROME and frame.ndim == 2:
        grey8, metadata = _render_monochrome(frame, ds, warnings, bits_stored=geometry.bits_stored)
        inverted = geometry.photometric == "MONOCHROME1" or _presentation_inverse(ds)
        if inverted:
            grey8 = 255 - grey8
        if metadata["window_source"] != "none":  # deeper than 8 bits: the original values are kept too
            metadata["display_inverted"] = int(inverted)
        return Image.fromarray(grey8, mode="L"), None, metadata
    rgb = _to_rgb8(frame, ds, geometry)
    colour = Image.fromarray(rgb, mode="RGB")
    warnings.append(f"the DICOM is in colour ({geometry.photometric}); it was converted to grey.")
    return colour.convert("L"), colour, _window_metadata(None, "none")


def _presentation_inverse(ds: Dataset) -> bool:
    return str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"


def _render_monochrome(
    frame: np.ndarray, ds: Dataset, warnings: list[str], *, bits_stored: int
) -> tuple[np.ndarray, dict[str, MetadataValue]]:
    """Modality LUT, then the file's VOI LUT or window to 8 bits.

    Without either, 8-bit data pass through unchanged (as an 8-bit PNG would, so the same
    radiograph hashes equal in both formats) and deeper data are stretched over their range.
    """
    values = apply_modality_lut(frame, ds)
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        lut_out = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
        lut_window = _lut_output_window(ds.VOILUTSequence[0], lut_out)
        return window_to_uint8(lut_out, lut_window), _window_metadata(None, "voi_lut", values)
    window = _dicom_window(ds, warnings)
    if window is not None:
        return window_to_uint8(values, window), _window_metadata(window, "dicom", values)
    if bits_stored <= 8 and _fits_uint8(values):
        return values.astype(np.uint8), _window_metadata(None, "none")
    data_window = data_range_window(values)
    return window_to_uint8(values, data_window), _window_metadata(data_window, "data_range", values)


def _window_metadata(window: Window | None, source: str, originals: np.ndarray | None = None) -> dict[str, Any]:
    """The allow-listed window keys: what was applied (centre/width in the file's units after the Modality
    LUT) and where it came from; with ``originals`` (the values it was applied to) also their 16-bit copy."""
    meta: dict[str, Any] = {
        "window_center": None if window is None else float(window.center),
        "window_width": None if window is None else float(window.width),
        "window_source": source,
    }
    if window is not None:
        meta["window_function"] = window.function
    if originals is not None:
        original = encode_original(originals)
        meta.update(original_slope=original.slope, original_intercept=original.intercept, _original=original)
    return meta


def _fits_uint8(values: np.ndarray) -> bool:
    if values.size == 0 or not np.issubdtype(values.dtype, np.number):
        return False
    return bool(np.all(values == np.rint(values)) and values.min() >= 0 and values.max() <= 255)


def _first_number(value: object) -> float | None:
    """First value of a DS/IS element that may be multi-valued (MultiValue is a Sequence)."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = value[0] if len(value) else None
    if value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _dicom_window(ds: Dataset, warnings: list[str]) -> Window | None:
    """The first Window Center/Width pair of the file, or None (with a warning if unusable)."""
    center = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    try:
        return Window(center=center, width=width, function=function)
    except ValueError:
        warnings.append(
            f"the DICOM window (centre {center:g}, width {width:g}, function "
            f"{function if function in VOI_FUNCTIONS else 'unrecognised'}) "
            "is invalid; the data range was used instead."
        )
        return None


def _lut_output_window(item: Dataset, lut_out: np.ndarray) -> Window:
    """Map the VOI LUT's own output range (not the image's) to black..white."""
    try:
        raw = item.LUTData
        bits = int(item.LUTDescriptor[2])
        if isinstance(raw, bytes):
            lut = np.frombuffer(raw, dtype="<u2" if bits > 8 else "u1")
        else:
            lut = np.asarray(raw if isinstance(raw, Iterable) else [raw], dtype=np.float64)
        low, high = float(lut.min()), float(lut.max())
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        low, high = float(lut_out.min()), float(lut_out.max())
    width = max(high - low, 1.0)
    return Window(center=low + width / 2.0, width=width, function="LINEAR_EXACT")


def _to_rgb8(frame: np.ndarray, ds: Dataset, geometry: _Geometry) -> np.ndarray:
    """Colour frame (RGB after pydicom's YBR conversion, or palette) as uint8 RGB."""
    if geometry.photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=2)
    if frame.dtype != np.uint8:
        peak = float(frame.max()) or 1.0
        bits = 8 if peak <= 255 else (16 if peak <= 65535 else 32)
        frame = np.rint(frame.astype(np.float64) * (255.0 / (2**bits - 1))).astype(np.uint8)
    return np.ascontiguousarray(frame[..., :3])
