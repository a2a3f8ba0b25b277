"""Synthetic pictures for tests and for measuring the chest-likeness gate.

Why in the package: tests across the project need a radiograph-shaped fixture that is not real
patient data, and ``scripts/measure_gating.py`` needs the same non-chest examples as the tests
so that the detection rate written in ``docs/inputs.md`` is reproducible. Everything here is
deterministic for a given ``seed`` and cheap (well under 50 ms per picture).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

if TYPE_CHECKING:  # pydicom is imported lazily: it costs ~0.4 s
    from pydicom.dataset import FileDataset

__all__ = [
    "NON_CXR_KINDS",
    "colourful_noise",
    "dicom_bytes",
    "grey_smooth_noise",
    "non_cxr_example",
    "phantom_cxr",
    "phantom_cxr_array",
    "synthetic_dicom_dataset",
    "text_screenshot",
    "uniform",
]

_WORDS = [
    "patient",
    "history",
    "report",
    "findings",
    "normal",
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "the",
    "and",
    "of",
    "invoice",
    "total",
    "amount",
    "login",
    "password",
    "settings",
    "window",
    "file",
    "edit",
    "view",
    "help",
    "page",
]


def _ellipse_mask(
    shape: tuple[int, int], center: tuple[float, float], radii: tuple[float, float]
) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    cy, cx = center
    ry, rx = radii
    return ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0


def phantom_cxr_array(
    size: tuple[int, int] = (256, 256), *, seed: int = 0, dtype: str = "uint8"
) -> np.ndarray:
    """A frontal chest-radiograph-like phantom (MONOCHROME2: bone bright, lungs dark).

    ``size`` is (width, height). ``dtype`` ``"uint16"`` yields 12-bit values (0..4095), as a
    detector would store them, for the DICOM and 16-bit PNG tests.
    """
    width, height = size
    if width < 8 or height < 8:
        raise ValueError(f"phantom size must be at least 8x8, got {size!r}")
    rng = np.random.default_rng(seed)
    shape = (height, width)
    img = np.full(shape, 0.05)
    img[_ellipse_mask(shape, (0.55 * height, 0.5 * width), (0.5 * height, 0.46 * width))] = 0.55  # body
    for side in (-1, 1):  # lungs
        lung = _ellipse_mask(shape, (0.47 * height, (0.5 + side * 0.2) * width), (0.3 * height, 0.14 * width))
        img[lung] = 0.2
    mediastinum = _ellipse_mask(shape, (0.55 * height, 0.5 * width), (0.33 * height, 0.07 * width))
    img[mediastinum] = 0.75
    heart = _ellipse_mask(shape, (0.66 * height, 0.54 * width), (0.13 * height, 0.13 * width))
    img[heart] = 0.7
    rows = np.arange(height)[:, None]
    for k in range(8):  # ribs: faint bright arcs
        y0 = (0.2 + 0.075 * k) * height
        cols = np.arange(width)[None, :]
        arc = y0 + 0.04 * height * np.cos((cols - width / 2) / width * np.pi)
        img += 0.08 * (np.abs(rows - arc) < max(1.0, 0.012 * height)) * (img > 0.15) * (img < 0.3)
    img += rng.normal(0.0, 0.015, shape)
    smooth = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1.2)
    )
    arr = np.asarray(smooth, dtype=np.float64) / 255.0
    if dtype == "uint16":
        return np.rint(arr * 4095).astype(np.uint16)
    if dtype == "uint8":
        return np.rint(arr * 255).astype(np.uint8)
    raise ValueError(f"dtype must be 'uint8' or 'uint16', got {dtype!r}")


def phantom_cxr(size: tuple[int, int] = (256, 256), *, seed: int = 0) -> Image.Image:
    """:func:`phantom_cxr_array` as an 8-bit grey Pillow image."""
    return Image.fromarray(phantom_cxr_array(size, seed=seed), mode="L")


def colourful_noise(size: tuple[int, int] = (320, 240), *, seed: int = 0) -> Image.Image:
    """Photo-like colour picture: smooth random colour blobs plus fine texture."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), mode="RGB")
    base = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    base += rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), mode="RGB")


def grey_smooth_noise(size: tuple[int, int] = (256, 256), *, seed: int = 0) -> Image.Image:
    """Grey cloud-like texture (natural-image-like spectrum, no anatomy)."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((size[1], size[0]))
    for cells, weight in ((4, 1.0), (8, 0.5), (16, 0.25), (64, 0.12)):
        coarse = Image.fromarray(rng.random((cells, cells)).astype(np.float32), mode="F")
        acc += weight * np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    acc = (acc - acc.min()) / max(np.ptp(acc), 1e-9)
    return Image.fromarray(np.rint(acc * 255).astype(np.uint8), mode="L")


def text_screenshot(size: tuple[int, int] = (640, 400), *, seed: int = 0, dark: bool = False) -> Image.Image:
    """A screenshot of a text document or form (light or dark theme)."""
    rng = np.random.default_rng(seed)
    background, ink = ((30, 30, 30), (220, 220, 220)) if dark else ((255, 255, 255), (20, 20, 20))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    y = 10
    while y < size[1] - 16:
        words = rng.choice(_WORDS, size=int(rng.integers(4, 14)))
        draw.text((12, y), " ".join(words), fill=ink, font=font)
        y += 20
    draw.rectangle((0, 0, size[0] - 1, 6), fill=(60, 90, 160))  # a title bar
    return image


def uniform(size: tuple[int, int] = (256, 256), *, value: int = 128) -> Image.Image:
    """A single-value grey picture (a blank scan, a black frame)."""
    if not 0 <= value <= 255:
        raise ValueError(f"value must be in 0..255, got {value!r}")
    return Image.new("L", size, value)


NON_CXR_KINDS: tuple[str, ...] = (
    "colourful_noise",
    "text_screenshot",
    "text_screenshot_dark",
    "uniform",
    "white_noise",
    "grey_smooth_noise",
    "horizontal_gradient",
)


def non_cxr_example(kind: str, *, seed: int = 0) -> Image.Image:
    """One synthetic non-chest picture of the given kind (see :data:`NON_CXR_KINDS`)."""
    rng = np.random.default_rng(seed)
    width = int(rng.integers(200, 480))
    height = int(rng.integers(200, 400))
    if kind == "colourful_noise":
        return colourful_noise((width, height), seed=seed)
    if kind == "text_screenshot":
        return text_screenshot((width + 200, height), seed=seed)
    if kind == "text_screenshot_dark":
        return text_screenshot((width + 200, height), seed=seed, dark=True)
    if kind == "uniform":
        return uniform((width, height), value=int(rng.integers(0, 256)))
    if kind == "white_noise":
        return Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), mode="L")
    if kind == "grey_smooth_noise":
        return grey_smooth_noise((width, height), seed=seed)
    if kind == "horizontal_gradient":
        ramp = np.linspace(0, 255, width)[None, :].repeat(height, axis=0)
        return Image.fromarray(np.rint(ramp).astype(np.uint8), mode="L")
    raise ValueError(f"unknown non-CXR kind {kind!r}; expected one of {NON_CXR_KINDS}")


#: SOP Class UID of "Digital X-Ray Image Storage - For Presentation".
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def synthetic_dicom_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    attributes: Mapping[str, object] | None = None,
    transfer_syntax: str | None = None,
    encapsulated_frames: Sequence[bytes] | None = None,
) -> FileDataset:
    """A DX-like DICOM data set holding ``pixels``, with proper file meta, ready to write.

    ``attributes`` are set by keyword (e.g. ``{"Modality": "CT"}``) after the pixel module, so
    they can also override it (absurd Rows, a bogus Bits Stored). With ``encapsulated_frames``
    the pixel data are replaced by those compressed frames under ``transfer_syntax``; the
    ``pixels`` array then only supplies the declared geometry.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    arr = np.ascontiguousarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(DX_FOR_PRESENTATION)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("synthetic.dcm", {}, file_meta=meta, preamble=b"\0" * 128)  # nothing is written
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.Modality = "DX"
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if encapsulated_frames is not None:
        if transfer_syntax is None:
            raise ValueError("encapsulated_frames need a compressed transfer_syntax, got None")
        ds.PixelData = encapsulate(list(encapsulated_frames))
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    if transfer_syntax is not None:
        meta.TransferSyntaxUID = UID(transfer_syntax)
    for keyword, value in (attributes or {}).items():
        setattr(ds, keyword, value)
    return ds


def dicom_bytes(ds: FileDataset, *, preamble: bool = True) -> bytes:
    """Serialise ``ds`` as a DICOM file (Part 10), or as a bare data set without preamble and
    file meta (old ACR-NEMA style) when ``preamble`` is False."""
    from pydicom import dcmwrite
    from pydicom.dataset import FileMetaDataset

    buffer = io.BytesIO()
    if preamble:
        dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()
    transfer_syntax = ds.file_meta.TransferSyntaxUID
    bare = ds.copy()
    bare.preamble = None
    bare.file_meta = FileMetaDataset()
    dcmwrite(
        buffer,
        bare,
        enforce_file_format=False,
        implicit_vr=transfer_syntax.is_implicit_VR,
        little_endian=transfer_syntax.is_little_endian,
    )
    return buffer.getvalue()
