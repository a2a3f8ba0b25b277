"""Result and configuration types of the image-input layer.

``LoadedImage`` is the only thing that leaves this layer: an 8-bit grey radiograph, an
allow-listed metadata dict and human-readable warnings. The allow-list is enforced when the
object is built, so no code path can smuggle a patient name, an ID, a date or a UID out of a
DICOM header by accident (de-identification by construction).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from PIL import Image

from .original import OriginalPixels

__all__ = [
    "ALLOWED_METADATA_KEYS",
    "DEFAULT_LIMITS",
    "DecodedPicture",
    "ImageLimits",
    "LoadedImage",
    "MetadataValue",
    "pixel_content_hash",
]

MetadataValue = str | int | float | None

#: Keys that may appear in :attr:`LoadedImage.metadata`; none of them can identify a patient.
ALLOWED_METADATA_KEYS: frozenset[str] = frozenset(
    {
        "source_format",  # "png" | "jpeg" | "dicom"
        "original_mode",  # Pillow mode of a PNG/JPEG before grey conversion ("RGB", "I;16", ...)
        "modality",  # DICOM (0008,0060), e.g. "CR", "DX"
        "view_position",  # DICOM (0018,5101), e.g. "PA", "AP", "LL"
        "photometric_interpretation",  # DICOM (0028,0004), e.g. "MONOCHROME1"
        "bits_stored",  # DICOM (0028,0101), or the PNG/JPEG sample depth
        "window_center",  # centre of the grey window actually applied (None: none applied)
        "window_width",  # width of the grey window actually applied
        "window_source",  # "dicom" | "voi_lut" | "data_range" | "none"
        "frames",  # number of frames in the file (only the first is used)
        "window_function",  # VOI LUT function of that window ("LINEAR", "LINEAR_EXACT", "SIGMOID")
        "original_slope",  # kept 16-bit originals: value = stored * slope + intercept (file units)
        "original_intercept",
        "display_inverted",  # 1: the originals display inverted (MONOCHROME1, or an INVERSE presentation LUT)
    }
)


@dataclass(frozen=True)
class ImageLimits:
    """Size limits, checked on *declared* sizes before any pixel is decoded.

    The defaults accept every chest radiograph detector we know of (the largest are about
    4300 x 4300 = 18.5 megapixels) while refusing decompression bombs and absurd headers.
    """

    max_pixels: int = 50_000_000
    max_frames: int = 1_000
    max_file_bytes: int = 512 * 1024 * 1024
    min_side: int = 32
    warn_below_side: int = 224

    def __post_init__(self) -> None:
        for key in ("max_pixels", "max_frames", "max_file_bytes", "min_side", "warn_below_side"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ImageLimits.{key} must be a positive int, got {value!r}")


DEFAULT_LIMITS = ImageLimits()


def pixel_content_hash(image: Image.Image) -> str:
    """SHA-256 of the grey pixels and the size, as hex.

    Why pixels and not PNG bytes: the hash must stay stable across Pillow/zlib versions so that
    the same radiograph uploaded twice (as DICOM, then as PNG export) de-duplicates.
    """
    if image.mode != "L":
        raise ValueError(f"pixel_content_hash expects a mode 'L' image, got mode {image.mode!r}")
    digest = hashlib.sha256()
    digest.update(f"echo-L:{image.width}x{image.height}:".encode("ascii"))
    digest.update(image.tobytes())
    return digest.hexdigest()


@dataclass
class DecodedPicture:
    """Intermediate result of one format decoder, before gating and packaging.

    ``colour`` keeps the RGB original (when there was colour) because the chest-likeness
    heuristic needs to see colourfulness that the grey conversion throws away.
    """

    grey: Image.Image
    metadata: dict[str, MetadataValue]
    warnings: list[str]
    colour: Image.Image | None = None
    original: OriginalPixels | None = None  # deeper than 8 bits: the values before windowing


@dataclass(frozen=True)
class LoadedImage:
    """One radiograph ready for the model: grey pixels, safe metadata, warnings.

    Attributes:
        image: 8-bit single-channel radiograph (Pillow mode ``"L"``), bright = dense (bone).
        name: display name of the source (a file's base name, or what the caller passed).
        metadata: allow-listed technical facts (see :data:`ALLOWED_METADATA_KEYS`); read-only.
        warnings: human-readable notes that the clinician should see (never silently dropped).
        cxr_likeness: heuristic score in [0, 1] that the picture is a chest radiograph.
        content_hash: :func:`pixel_content_hash` of ``image``, for de-duplication.
        original: for data deeper than 8 bits, the pixel values before windowing (16-bit, with the map back
            to the file's units in ``metadata``: ``original_slope``/``original_intercept``); None otherwise.
    """

    image: Image.Image
    name: str
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    cxr_likeness: float = 1.0
    content_hash: str = ""
    original: OriginalPixels | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.image.mode != "L":
            raise ValueError(f"LoadedImage.image must be mode 'L', got {self.image.mode!r}")
        if self.original is not None and self.original.stored.shape != (self.image.height, self.image.width):
            raise ValueError(f"original pixels of shape {self.original.stored.shape} do not match the "
                             f"{self.image.width}x{self.image.height} image")
        unknown = sorted(set(self.metadata) - ALLOWED_METADATA_KEYS)
        if unknown:
            raise ValueError(f"metadata keys outside the de-identification allow-list: {unknown}")
        for key, value in self.metadata.items():
            if value is not None and not isinstance(value, (str, int, float)):
                raise ValueError(f"metadata[{key!r}] must be str/int/float/None, got {value!r}")
        if not 0.0 <= self.cxr_likeness <= 1.0:
            raise ValueError(f"cxr_likeness must lie in [0, 1], got {self.cxr_likeness!r}")
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        expected = pixel_content_hash(self.image)
        if self.content_hash and self.content_hash != expected:
            raise ValueError(f"content_hash {self.content_hash!r} does not match the pixels")
        object.__setattr__(self, "content_hash", expected)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.size
