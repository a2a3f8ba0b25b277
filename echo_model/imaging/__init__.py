"""Image input for ECHO: PNG, JPEG and DICOM in, 8-bit grey radiograph out.

Public API (flat)::

    from echo_model.imaging import load_image, load_study, to_deidentified_png, cxr_likeness

* :func:`load_image` / :func:`load_study` return :class:`LoadedImage` objects (grey pixels,
  allow-listed metadata, warnings, a chest-likeness score and a content hash);
* unusable files raise a subclass of :class:`ImageInputError` (a ``ValueError``);
* questionable but usable files load with human-readable ``warnings`` (never silently refused).

See ``docs/inputs.md`` for what is accepted, accepted with a warning, and refused.
"""

from .deid import (
    ALLOWED_PNG_CHUNKS,
    content_hash,
    png_chunk_types,
    png_without_pixels,
    to_deidentified_original_png,
    to_deidentified_png,
)
from .errors import (
    CorruptImageError,
    EmptyFileError,
    ImageInputError,
    ImageTooLargeError,
    ImageTooSmallError,
    NoPixelDataError,
    UnsupportedFormatError,
    UnsupportedTransferSyntaxError,
)
from .gating import CXR_LIKENESS_THRESHOLD, CxrLikeness, assess_cxr_likeness, cxr_likeness
from .loader import DEFAULT_UPLOAD_NAME, ImageSource, load_image, load_study
from .original import OriginalPixels, decode_original_png, encode_original
from .sniff import detect_format
from .types import ALLOWED_METADATA_KEYS, DEFAULT_LIMITS, ImageLimits, LoadedImage, pixel_content_hash

__all__ = [
    "ALLOWED_METADATA_KEYS",
    "ALLOWED_PNG_CHUNKS",
    "CXR_LIKENESS_THRESHOLD",
    "DEFAULT_LIMITS",
    "DEFAULT_UPLOAD_NAME",
    "CorruptImageError",
    "CxrLikeness",
    "EmptyFileError",
    "ImageInputError",
    "ImageLimits",
    "ImageSource",
    "ImageTooLargeError",
    "ImageTooSmallError",
    "LoadedImage",
    "NoPixelDataError",
    "OriginalPixels",
    "UnsupportedFormatError",
    "UnsupportedTransferSyntaxError",
    "assess_cxr_likeness",
    "content_hash",
    "cxr_likeness",
    "decode_original_png",
    "detect_format",
    "encode_original",
    "load_image",
    "load_study",
    "pixel_content_hash",
    "png_chunk_types",
    "png_without_pixels",
    "to_deidentified_original_png",
    "to_deidentified_png",
]
