"""Error types raised when an uploaded file cannot become a radiograph.

Every error derives from :class:`ImageInputError`, itself a :class:`ValueError`, so a caller
(the web app, the CLI) can catch one type and show ``str(error)`` to a clinician: each message
names the file by the display name it was given (never a temporary directory) and says what is
wrong and, where possible, what to do. The subclasses exist so that callers and tests can tell
*why* a file was refused without parsing messages.

Hierarchy::

    ImageInputError(ValueError)
    +-- EmptyFileError                    zero-byte upload
    +-- UnsupportedFormatError            not PNG / JPEG / DICOM (text, HTML, PDF, GIF, ...)
    |   +-- UnsupportedTransferSyntaxError  DICOM compression with no decoder installed
    +-- CorruptImageError                 truncated or malformed PNG / JPEG / DICOM
    +-- ImageTooLargeError                over the pixel, frame or file-size limit
    +-- ImageTooSmallError                under the minimum side length
    +-- NoPixelDataError                  DICOM without (0x7FE0,0x0010) Pixel Data
"""

from __future__ import annotations

__all__ = [
    "CorruptImageError",
    "EmptyFileError",
    "ImageInputError",
    "ImageTooLargeError",
    "ImageTooSmallError",
    "NoPixelDataError",
    "UnsupportedFormatError",
    "UnsupportedTransferSyntaxError",
]


class ImageInputError(ValueError):
    """Base class: the file cannot be turned into a grey radiograph.

    ``name`` is the display name of the offending file, kept separately so that a UI can
    highlight which of several uploaded views failed.
    """

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


class EmptyFileError(ImageInputError):
    """The file holds zero bytes (an interrupted upload or a placeholder)."""


class UnsupportedFormatError(ImageInputError):
    """The content is not PNG, JPEG or DICOM (whatever the file extension says)."""


class UnsupportedTransferSyntaxError(UnsupportedFormatError):
    """A DICOM file whose pixel compression cannot be decoded in this installation.

    The message names the transfer syntax and the ``pip install`` command that adds a decoder.
    """


class CorruptImageError(ImageInputError):
    """The file claims a supported format but its content is truncated or malformed."""


class ImageTooLargeError(ImageInputError):
    """The declared size exceeds a limit (checked before decoding: decompression-bomb guard)."""


class ImageTooSmallError(ImageInputError):
    """The image is too small to hold a readable radiograph (e.g. an icon or a 1x1 pixel)."""


class NoPixelDataError(ImageInputError):
    """A DICOM object without pixel data (a structured report, a presentation state, ...)."""
