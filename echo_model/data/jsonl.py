"""Generic study-record JSONL adapter, and the result types every adapter shares.

Any JSON Lines file in the study-record format of :mod:`echo_model.data.records` can be trained on:
the app's correction export, or MIMIC-CXR / CheXpert-Plus data that a user converted
themselves (those licences forbid us from shipping a converter's output, not from reading it).

Why this module also holds :class:`LoadReport` / :class:`LoadResult` / :class:`RecordFileError`:
the record file is the format all adapters produce, so its primitives live here and the
data-set adapters (:mod:`.iu_xray`, :mod:`.covid_notes`) import them without import cycles.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .records import ImageRef, RecordError, StudyRecord, read_jsonl_lines, resolve_image

__all__ = [
    "EVAL_SPLITS",
    "SPLIT_NAMES",
    "LoadReport",
    "LoadResult",
    "RecordFileError",
    "absolute_path",
    "check_split",
    "clean_text",
    "load_records_jsonl",
    "raw_report_text",
    "read_records_jsonl",
    "split_counts",
]

log = logging.getLogger(__name__)

#: The split names a record may carry (``None`` = unassigned).
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
#: Splits used for evaluation; training data is de-duplicated against these (see :mod:`.dedup`).
EVAL_SPLITS: tuple[str, ...] = ("val", "test")


class RecordFileError(RecordError):
    """A :class:`RecordError` that also names the file, so a user can open it at the bad line.

    Why a subclass: callers that already catch ``RecordError`` (or ``ValueError``) keep working,
    while the message grows the file path in front of ``line N, record ..., field ...``.
    """

    def __init__(self, path: str | Path, cause: RecordError) -> None:
        # RecordError.__init__ formats its own message; we want "<file>: <that message>".
        ValueError.__init__(self, f"{path}: {cause}")
        self.record_id, self.field_name, self.line = cause.record_id, cause.field_name, cause.line
        self.path = Path(path)


@dataclass
class LoadReport:
    """What an adapter did with its input: kept, skipped (by reason), images found or missing.

    Why: adapters must never crash on a missing image or an empty report, but silently losing
    data is as bad; the counts are logged and printed by ``python -m echo_model.data.registry``.
    """

    source: str
    path: str
    rows: int = 0
    kept: int = 0
    filtered_by_split: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    images_found: int = 0
    images_missing: int = 0
    studies_without_found_image: int = 0
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        """Count one input row dropped for ``reason`` (a short human-readable phrase)."""
        self.skipped[reason] += 1

    def summary(self) -> str:
        """One paragraph for logs."""
        parts = [f"{self.source} at {self.path}: {self.rows} rows, {self.kept} studies kept"]
        if self.filtered_by_split:
            parts.append(f"{self.filtered_by_split} in other splits")
        for reason, count in sorted(self.skipped.items()):
            parts.append(f"{count} skipped ({reason})")
        if self.images_found or self.images_missing:
            parts.append(f"images: {self.images_found} found, {self.images_missing} not found")
        if self.studies_without_found_image:
            parts.append(f"{self.studies_without_found_image} studies left text-only because no image was found")
        return "; ".join(parts)


@dataclass
class LoadResult:
    """Records plus the :class:`LoadReport` of how they were obtained."""

    records: list[StudyRecord]
    report: LoadReport


def raw_report_text(findings: str, impression: str) -> str:
    """The source report as one string, ``Findings: … Impression: …`` (kept in ``StudyRecord.raw_report``)."""
    return f"Findings: {findings.strip()} Impression: {impression.strip()}".rstrip()


def check_split(split: str | None) -> str | None:
    """Validate a split filter; ``None`` means all splits."""
    if split is not None and split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES} or None, got {split!r}")
    return split


def clean_text(text: str | None) -> str:
    """Collapse every run of whitespace to one space and strip the ends; ``None`` gives ``""``."""
    return " ".join(text.split()) if text else ""


def split_counts(records: Iterable[StudyRecord]) -> dict[str, dict[str, int]]:
    """Per split (``"none"`` for unassigned): studies with at least one image, and text-only ones."""
    out: dict[str, dict[str, int]] = {}
    for rec in records:
        row = out.setdefault(rec.split or "none", {"with_images": 0, "text_only": 0, "images": 0})
        row["with_images" if rec.images else "text_only"] += 1
        row["images"] += len(rec.images)
    return dict(sorted(out.items()))


def parse_row(raw: str, line: int, seen: dict[str, int]) -> tuple[dict, str]:
    """One JSONL line of a source data set -> ``(row, id)``; rejects bad JSON, non-objects, missing and
    duplicate ids with a :class:`RecordError` naming the line (``seen`` maps ids to their first line)."""
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as err:
        raise RecordError("?", "(json)", f"invalid JSON ({err.msg})", line=line) from None
    if not isinstance(row, dict):
        raise RecordError("?", "(record)", f"expected a JSON object, got {type(row).__name__}", line=line)
    rid = row.get("id")
    if not isinstance(rid, str) or not rid.strip():
        raise RecordError(str(rid), "id", "must be a non-empty string", line=line)
    if rid in seen:
        raise RecordError(rid, "id", f"duplicate id (first on line {seen[rid]})", line=line)
    seen[rid] = line
    return row, rid


def read_rows(
    path: Path,
    to_record: Callable[[str, int], StudyRecord | None],
    *,
    report: LoadReport,
    split: str | None,
    desc: str,
    unit: str,
) -> list[StudyRecord]:
    """The records of a data set's JSONL rows: every non-blank line through ``to_record(raw, line_no)`` (None =
    skipped, counted by the adapter), kept when in ``split``; ``report`` counts rows, split drops and kept rows.

    Raises:
        RecordFileError: a row's record is invalid (the message names the file and line).
    """
    from tqdm import tqdm

    with path.open(encoding="utf-8") as fh:
        lines = fh.readlines()
    records: list[StudyRecord] = []
    try:
        for line_no, raw in enumerate(tqdm(lines, desc=desc, unit=unit, disable=None), start=1):
            if not raw.strip():
                continue
            report.rows += 1
            rec = to_record(raw, line_no)
            if rec is None:
                continue
            if split is not None and rec.split != split:
                report.filtered_by_split += 1
                continue
            records.append(rec)
    except RecordError as err:
        raise RecordFileError(path, err) from None
    report.kept = len(records)
    return records


def absolute_path(path: Path) -> str:
    """An absolute, normalised path string, without resolving symlinks (they may be deliberate)."""
    return os.path.normpath(path.absolute())


def read_records_jsonl(path: str | Path, *, split: str | None = None) -> LoadResult:
    """Read a study-record JSONL file; see :func:`load_records_jsonl`."""
    path = Path(path)
    check_split(split)
    if not path.is_file():
        raise FileNotFoundError(f"record file {str(path)!r} does not exist or is not a file")
    report = LoadReport(source="jsonl", path=str(path))
    records: list[StudyRecord] = []
    first_line: dict[str, int] = {}
    error_rows: list[int] = []
    try:
        for record, line_no in read_jsonl_lines(path, errors=error_rows):
            report.rows += 1
            if record.id in first_line:
                raise RecordError(record.id, "id", f"duplicate id (first on line {first_line[record.id]})", line=line_no)
            first_line[record.id] = line_no
            if split is not None and record.split != split:
                report.filtered_by_split += 1
                continue
            images = tuple(ImageRef(path=absolute_path(resolve_image(path, img)), view=img.view) for img in record.images)
            for img in images:
                if Path(img.path).is_file():
                    report.images_found += 1
                else:
                    report.images_missing += 1
            records.append(replace(record, images=images))
    except RecordFileError:
        raise
    except RecordError as err:
        raise RecordFileError(path, err) from None
    report.kept = len(records)
    for _ in error_rows:
        report.skip("study not drafted (error row)")
    if report.images_missing:
        report.notes.append("records whose image files are missing are kept as they are; check the image paths")
        log.warning("%s: %d image files named by records do not exist", path, report.images_missing)
    log.info(report.summary())
    return LoadResult(records, report)


def load_records_jsonl(path: str | Path, *, split: str | None = None) -> list[StudyRecord]:
    """Load any JSONL file in the study-record format (``echo.study/1``).

    The text is used as written: record files carry clinicians' corrections (the app's export) or text a
    user prepared, so the report normalizer (:mod:`.normalize`) never runs on them.

    Relative image paths are resolved against the file's folder and made absolute, because the
    returned records live in memory, detached from the file. Image files are not opened; missing
    ones are counted and logged, not dropped (the record is the user's statement of its input).

    Args:
        path: the ``.jsonl`` file.
        split: keep only records of this split (``"train"``, ``"val"``, ``"test"``); ``None`` keeps all.

    Raises:
        RecordFileError: a malformed or duplicate record; the message names the file, the line,
            the record id and the field.
        FileNotFoundError: ``path`` is not a file.
    """
    return read_records_jsonl(path, split=split).records
