"""De-duplication: identical studies within a list, and training studies that leak into evaluation.

Why: a study that is in both the training and the evaluation list (the same radiograph exported
twice, a correction export of a test study, a re-staged copy of a data set) inflates every
metric. Two keys are used:

* **image content hash**: :attr:`echo_model.imaging.LoadedImage.content_hash` (SHA-256 of the
  decoded grey pixels, so a DICOM and its PNG export match). Without images, or with
  ``hash_images=False``, the absolute file path stands in for the hash;
* **normalised report text**: findings + impression, lower-cased, every run of non-word
  characters replaced by one space (so punctuation and spacing differences do not matter).

Within one list, two studies are *identical* when both keys agree (for image-less studies: the
text and the normalised indication, i.e. the same input and the same target); the first one is
kept. Across lists, a training study is removed when any of its images, or its text, matches an
evaluation study. Note the text rule's cost on templated corpora: IU X-ray has many verbatim
"normal" reports, and text matching removes those from training too (see ``docs/data.md``);
pass ``by_text=False`` to match on images only.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .records import StudyRecord

__all__ = [
    "DedupReport",
    "ImageHasher",
    "deduplicate",
    "normalise_text",
    "remove_overlap",
    "report_key",
]

log = logging.getLogger(__name__)

_NON_WORD = re.compile(r"[\W_]+")


def normalise_text(text: str | None) -> str:
    """Lower-case, every run of non-word characters to one space, stripped (``None`` gives ``""``)."""
    return _NON_WORD.sub(" ", text.lower()).strip() if text else ""


def report_key(record: StudyRecord) -> str:
    """The normalised report text of a study: findings and impression, in that order."""
    return normalise_text(f"{record.findings} {record.impression}")


@dataclass
class ImageHasher:
    """Content hashes of image files, cached by path; unreadable files hash to ``None``.

    Why a class: the same image is often named by several studies (and by both lists), and
    decoding a radiograph is the slow part of de-duplication, so each file is decoded once.
    ``hash_file`` may be replaced (tests, or a faster hash of already-normalised files).
    """

    hash_file: Callable[[str], str] | None = None
    unreadable: list[str] = field(default_factory=list)
    _cache: dict[str, str | None] = field(default_factory=dict, repr=False)

    def __call__(self, path: str) -> str | None:
        key = os.path.normpath(Path(path).absolute())
        if key not in self._cache:
            self._cache[key] = self._hash(key)
        return self._cache[key]

    @property
    def hashed(self) -> int:
        """How many distinct files were hashed successfully."""
        return sum(v is not None for v in self._cache.values())

    def _hash(self, path: str) -> str | None:
        hasher = self.hash_file or _content_hash
        try:
            return hasher(path)
        except (OSError, ValueError) as err:  # ImageInputError is a ValueError
            self.unreadable.append(path)
            log.warning("cannot hash image %s (%s); matching it by path instead", path, err)
            return None


def _content_hash(path: str) -> str:
    from echo_model.imaging import (
        load_image,  # imported here: the imaging stack is not needed to import this module
    )

    return load_image(path).content_hash


@dataclass(frozen=True)
class DedupReport:
    """Counts of one de-duplication step."""

    kept: int
    duplicates_within: int = 0
    overlap_image: int = 0
    overlap_text: int = 0
    images_unreadable: int = 0

    @property
    def removed(self) -> int:
        return self.duplicates_within + self.overlap_image + self.overlap_text

    def summary(self) -> str:
        return (f"kept {self.kept}, removed {self.removed} (identical within the list {self.duplicates_within}, "
                f"image shared with evaluation {self.overlap_image}, report text shared with evaluation "
                f"{self.overlap_text}); {self.images_unreadable} images could not be hashed")


def _image_keys(record: StudyRecord, hasher: ImageHasher | None) -> list[str]:
    keys = []
    for img in record.images:
        digest = hasher(img.path) if hasher is not None else None
        keys.append(f"sha256:{digest}" if digest else f"path:{os.path.normpath(Path(img.path).absolute())}")
    return keys


def _progress(records: Sequence[StudyRecord], desc: str, hasher: ImageHasher | None) -> Iterable[StudyRecord]:
    """A tqdm bar only when images are decoded (the slow case); plain iteration otherwise."""
    if hasher is None or not any(r.images for r in records):
        return records
    return tqdm(records, desc=desc, unit="study", disable=None)


def deduplicate(
    records: Sequence[StudyRecord], *, hash_images: bool = True, hasher: ImageHasher | None = None
) -> tuple[list[StudyRecord], DedupReport]:
    """Drop studies identical to an earlier one in ``records`` (same images and same report text).

    Image-less studies are identical when text and normalised indication agree: their input is
    the indication, so such a pair is the same training example twice.

    Args:
        records: the list, in priority order (the first of identical studies is kept).
        hash_images: compare images by decoded content (``True``) or by absolute path (``False``).
        hasher: a shared :class:`ImageHasher`, to reuse its cache across calls.
    """
    hasher = (hasher or ImageHasher()) if hash_images else None
    unreadable_before = len(hasher.unreadable) if hasher else 0
    seen: set[tuple[str, ...]] = set()
    kept: list[StudyRecord] = []
    for rec in _progress(records, "dedup", hasher):
        inputs = sorted(_image_keys(rec, hasher)) if rec.images else [f"indication:{normalise_text(rec.indication)}"]
        key = (rec.language, report_key(rec), *inputs)
        if key in seen:
            continue
        seen.add(key)
        kept.append(rec)
    report = DedupReport(
        kept=len(kept), duplicates_within=len(records) - len(kept),
        images_unreadable=(len(hasher.unreadable) - unreadable_before) if hasher else 0,
    )
    log.info("de-duplication within a list: %s", report.summary())
    return kept, report


def remove_overlap(
    train: Sequence[StudyRecord],
    evaluation: Sequence[StudyRecord],
    *,
    by_image: bool = True,
    by_text: bool = True,
    hash_images: bool = True,
    hasher: ImageHasher | None = None,
) -> tuple[list[StudyRecord], DedupReport]:
    """Drop from ``train`` every study that shares an image or its report text with ``evaluation``.

    A removed study is counted once, under the image rule when both rules match.

    Args:
        train: the training list.
        evaluation: the validation and/or test list (not modified).
        by_image: match on image content hash (path when ``hash_images`` is false).
        by_text: match on normalised findings + impression.
        hash_images: decode images to hash their pixels; ``False`` compares absolute paths.
        hasher: a shared :class:`ImageHasher`.
    """
    if not (by_image or by_text):
        raise ValueError("remove_overlap needs by_image or by_text (both are False)")
    hasher = (hasher or ImageHasher()) if (hash_images and by_image) else None
    unreadable_before = len(hasher.unreadable) if hasher else 0
    eval_images: set[str] = set()
    eval_texts: set[str] = set()
    for rec in _progress(evaluation, "hash evaluation", hasher):
        if by_image:
            eval_images.update(_image_keys(rec, hasher))
        if by_text:
            eval_texts.add(report_key(rec))
    kept: list[StudyRecord] = []
    by_img = by_txt = 0
    for rec in _progress(train, "hash training", hasher):
        if by_image and eval_images.intersection(_image_keys(rec, hasher)):
            by_img += 1
        elif by_text and report_key(rec) in eval_texts:
            by_txt += 1
        else:
            kept.append(rec)
    report = DedupReport(
        kept=len(kept), overlap_image=by_img, overlap_text=by_txt,
        images_unreadable=(len(hasher.unreadable) - unreadable_before) if hasher else 0,
    )
    log.info("training/evaluation overlap: %s", report.summary())
    return kept, report
