"""De-identified export: the only bytes of an image that leave the input layer.

A PNG written from a fresh ``Image`` carries no ``info`` dict, so Pillow emits exactly IHDR,
IDAT and IEND: no tEXt/iTXt/zTXt, eXIf, tIME, iCCP or pHYs chunks that could hold a name, a
date or a device serial. Header metadata is already reduced to an allow-list by
:class:`~echo_model.imaging.types.LoadedImage`. Burned-in pixel text is *not* removed (it is
flagged by a warning when the DICOM declares it).
"""

from __future__ import annotations

import io
import struct

from PIL import Image

from .types import LoadedImage

__all__ = ["ALLOWED_PNG_CHUNKS", "content_hash", "png_chunk_types", "to_deidentified_original_png",
           "to_deidentified_png"]

#: Chunk types that :func:`to_deidentified_png` may write.
ALLOWED_PNG_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND"})


def to_deidentified_png(loaded: LoadedImage) -> bytes:
    """Encode the grey pixels of ``loaded`` as a PNG with no metadata chunks at all."""
    clean = Image.frombytes("L", loaded.image.size, loaded.image.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=6)
    data = buffer.getvalue()
    unexpected = set(png_chunk_types(data)) - ALLOWED_PNG_CHUNKS
    if unexpected:  # defensive: a future Pillow must not start writing metadata silently
        raise RuntimeError(f"PNG encoder wrote unexpected chunks {sorted(unexpected)}")
    return data


def to_deidentified_original_png(loaded: LoadedImage) -> bytes | None:
    """The 16-bit grey PNG of the original values of ``loaded`` (IHDR/IDAT/IEND only); None for 8-bit sources."""
    from .original import original_png

    return None if loaded.original is None else original_png(loaded.original.stored)


def content_hash(loaded: LoadedImage) -> str:
    """SHA-256 (hex) of the de-identified pixels: equal for the same radiograph in any format.

    The same value as ``loaded.content_hash``; a function too, for callers that de-duplicate
    without caring how :class:`LoadedImage` stores it.
    """
    return loaded.content_hash


def _png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, start, end) of each chunk of a PNG, in order."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"not a PNG: starts with {data[:8]!r}")
    chunks: list[tuple[bytes, int, int]] = []
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks.append((kind, pos, pos + 12 + length))
        pos += 12 + length
    return chunks


def png_chunk_types(data: bytes) -> list[bytes]:
    """Chunk type codes of a PNG, in order (for audits and tests)."""
    return [kind for kind, _, _ in _png_chunks(data)]


def png_without_pixels(data: bytes) -> bytes:
    """The PNG with its IDAT payloads (compressed pixels) left out: every header and metadata byte, for PHI scans."""
    kept = bytearray(data[:8])
    for kind, start, end in _png_chunks(data):
        kept += data[start:start + 8] if kind == b"IDAT" else data[start:end]
    return bytes(kept)
