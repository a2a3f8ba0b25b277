"""Entry points: bytes/paths/file objects in, :class:`LoadedImage` out.

The steps are ordered so that nothing expensive happens before the cheap checks have passed:
file size -> empty -> magic bytes -> declared size -> decode -> gate (warn) -> package.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import PurePath
from typing import BinaryIO, Union

from .errors import (
    CorruptImageError,
    EmptyFileError,
    ImageTooLargeError,
    ImageTooSmallError,
    UnsupportedFormatError,
)
from .gating import CXR_LIKENESS_THRESHOLD, assess_cxr_likeness
from .raster import decode_raster
from .sniff import DeclaredRaster, describe_unsupported, detect_format, read_jpeg_header, read_png_header
from .types import DEFAULT_LIMITS, DecodedPicture, ImageLimits, LoadedImage

__all__ = ["DEFAULT_UPLOAD_NAME", "ImageSource", "load_image", "load_study"]

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]

#: Display name used when the source carries none (raw bytes, anonymous streams).
DEFAULT_UPLOAD_NAME = "uploaded image"
_NAME_JUNK = re.compile(r"[\x00-\x1f\x7f]")


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
    cxr_threshold: float = CXR_LIKENESS_THRESHOLD,
) -> LoadedImage:
    """Read one PNG, JPEG or DICOM radiograph into an 8-bit grey :class:`LoadedImage`.

    Args:
        source: a path, the file's bytes, or a binary file object (read from its current
            position). The format is detected from the content; the extension is ignored.
        name: display name used in messages; defaults to the file's base name (never its
            directory, which for uploads is a temporary folder).
        limits: size limits checked on the declared size before decoding.
        cxr_threshold: :func:`cxr_likeness` score under which a warning is added.

    Raises:
        ImageInputError: a subclass saying why the file cannot be used (see :mod:`.errors`).
    """
    if not 0.0 <= cxr_threshold <= 1.0:
        raise ValueError(f"cxr_threshold must lie in [0, 1], got {cxr_threshold!r}")
    display = _display_name(source, name)
    data = _read_bytes(source, display, limits)
    decoded = _decode(data, display, limits)
    warnings = list(decoded.warnings)
    _check_decoded_size(decoded, display, limits, warnings)
    assessment = assess_cxr_likeness(decoded.colour if decoded.colour is not None else decoded.grey)
    if assessment.score < cxr_threshold:
        reasons = "; ".join(assessment.reasons()) or "several weak signs"
        warnings.append(
            f"this does not look like a chest radiograph (score {assessment.score:.2f} < {cxr_threshold:.2f}: "
            f"{reasons}). Check that the right file was chosen."
        )
    return LoadedImage(
        image=decoded.grey,
        name=display,
        metadata=decoded.metadata,
        warnings=tuple(warnings),
        cxr_likeness=min(max(assessment.score, 0.0), 1.0),
        original=decoded.original,
    )


def load_study(
    sources: Sequence[ImageSource],
    *,
    names: Sequence[str] | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
    cxr_threshold: float = CXR_LIKENESS_THRESHOLD,
    max_views: int = 8,
) -> list[LoadedImage]:
    """Load the views (frontal, lateral, ...) of one study, in the given order.

    Fails on the first unusable file (its error names it). Views whose pixels are identical to
    an earlier view get a warning rather than being dropped, so the user sees the mistake.
    """
    if isinstance(sources, (str, bytes, bytearray, memoryview)) or not isinstance(sources, Sequence):
        raise TypeError(f"sources must be a sequence of images, got {type(sources).__name__}")
    if not sources:
        raise ValueError("a study needs at least one image, got an empty sequence")
    if len(sources) > max_views:
        raise ValueError(f"a study holds at most {max_views} views, got {len(sources)}")
    if names is not None and len(names) != len(sources):
        raise ValueError(f"got {len(names)} names for {len(sources)} sources")
    loaded: list[LoadedImage] = []
    for index, source in enumerate(sources):
        view = load_image(
            source, name=None if names is None else names[index], limits=limits, cxr_threshold=cxr_threshold
        )
        twin = next((earlier for earlier in loaded if earlier.content_hash == view.content_hash), None)
        if twin is not None:
            note = f"this view is pixel-identical to {twin.name!r}; the same image was probably added twice."
            view = dataclasses.replace(view, warnings=(*view.warnings, note))
        loaded.append(view)
    return loaded


def _display_name(source: ImageSource, name: str | None) -> str:
    """The name shown in messages: the caller's, else the base name of a path, never a folder."""
    if name is None:
        raw: object = None
        if isinstance(source, (str, os.PathLike)):
            raw = os.fspath(source)
        elif not isinstance(source, (bytes, bytearray, memoryview)):
            raw = getattr(source, "name", None)
        name = PurePath(raw).name if isinstance(raw, str) and raw else DEFAULT_UPLOAD_NAME
    cleaned = _NAME_JUNK.sub("", str(name)).strip()[:120]
    return cleaned or DEFAULT_UPLOAD_NAME


def _read_bytes(source: ImageSource, name: str, limits: ImageLimits) -> bytes:
    """All bytes of the source, refusing files over ``limits.max_file_bytes`` before reading."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        size = os.stat(source).st_size
        _check_file_size(size, name, limits)
        with open(source, "rb") as handle:
            data = handle.read(limits.max_file_bytes + 1)
    elif hasattr(source, "read"):
        data = source.read(limits.max_file_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(
                f"file object for {name!r} must be opened in binary mode, read() gave {type(data).__name__}"
            )
        data = bytes(data)
    else:
        raise TypeError(f"source must be a path, bytes or a binary file object, got {type(source).__name__}")
    _check_file_size(len(data), name, limits)
    if not data:
        raise EmptyFileError(name, "the file is empty (0 bytes); the upload may have been interrupted.")
    return data


def _check_file_size(size: int, name: str, limits: ImageLimits) -> None:
    if size > limits.max_file_bytes:
        raise ImageTooLargeError(
            name,
            f"the file is {size / 2**20:.1f} MiB, over the limit of {limits.max_file_bytes / 2**20:.1f} MiB.",
        )


def _decode(data: bytes, name: str, limits: ImageLimits) -> DecodedPicture:
    fmt = detect_format(data)
    if fmt is None:
        raise UnsupportedFormatError(
            name,
            f"the content is {describe_unsupported(data)}, not a PNG, JPEG or DICOM image "
            "(the format is read from the content, not the file name).",
        )
    if fmt in ("png", "jpeg"):
        header = _require_declared_raster(
            read_png_header(data) if fmt == "png" else read_jpeg_header(data), fmt, name, limits
        )
        return decode_raster(data, fmt=fmt, name=name, bit_depth=header.bit_depth)
    from .dicom import decode_dicom  # pydicom costs ~0.4 s to import; only pay it for DICOM

    return decode_dicom(data, name=name, limits=limits, has_preamble=fmt == "dicom")


def _require_declared_raster(
    header: DeclaredRaster | None, fmt: str, name: str, limits: ImageLimits
) -> DeclaredRaster:
    """The PNG/JPEG header, once its declared size and depth have passed the limits."""
    kind = fmt.upper()
    if header is None:
        raise CorruptImageError(
            name, f"the {kind} has no valid image header; the file is damaged or truncated."
        )
    width, height = header.width, header.height
    if width < 1 or height < 1:
        raise CorruptImageError(name, f"the {kind} header declares an empty image ({width}x{height}).")
    pixels = width * height
    if pixels > limits.max_pixels:
        raise ImageTooLargeError(
            name,
            f"the {kind} declares {width}x{height} = {pixels / 1e6:.1f} megapixels, over the limit of "
            f"{limits.max_pixels / 1e6:.1f} megapixels (decompression-bomb guard).",
        )
    if min(width, height) < limits.min_side:
        raise ImageTooSmallError(
            name,
            f"the image is only {width}x{height} pixels; at least {limits.min_side} pixels per side are needed.",
        )
    if fmt == "jpeg" and header.bit_depth != 8:
        raise UnsupportedFormatError(
            name,
            f"{header.bit_depth}-bit JPEG cannot be decoded here; export a 16-bit PNG or the DICOM instead.",
        )
    return header


def _check_decoded_size(decoded: DecodedPicture, name: str, limits: ImageLimits, warnings: list[str]) -> None:
    """Re-check after decoding (EXIF rotation or a lying header) and warn on low resolution."""
    width, height = decoded.grey.size
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(name, f"the decoded image is {width}x{height}, over the pixel limit.")
    if min(width, height) < limits.warn_below_side:
        warnings.append(
            f"the image is small ({width}x{height} pixels); fine findings may be missed. Upload the original if possible."
        )
