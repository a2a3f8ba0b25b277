"""The study record: one versioned schema shared by the data adapters, the trainers, the evaluator and the
app's correction export.

A record is one study (one report, one or more views). Stored as JSON Lines, one object per line; image
paths are relative to the JSONL file's folder unless absolute. Version 1 fields:

=================  =====================================================================================
``schema``         ``"echo.study/1"``
``id``             unique study id (string)
``images``         list of ``{"path": str, "view": "frontal"|"lateral"|"pa"|"ap"|"unknown"}`` (may be empty)
``indication``     clinical indication or ``null``
``findings``       findings text ("" when absent)
``impression``     impression text ("" when absent); findings and impression are not both empty
``language``       ``"en"`` or ``"zh"``
``source``         data set name (``iu_xray``, ``covid_cxr_notes``, ``echo_app``, ...)
``split``          ``"train"``, ``"val"``, ``"test"`` or ``null``
``licence``        licence of the text and images
``raw_report``     optional (absent or ``null``): the source report before normalization
                   (``Findings: … Impression: …``, method.md §3.5), set by the IU X-ray and covid_cxr_notes
                   adapters when they normalize; written only when set, so files without it are unchanged
``correction``     only for radiologist corrections: ``draft_id``, ``model``, ``model_revision``,
                   ``draft_findings``, ``draft_impression``, ``edit_reasons`` (subset of
                   :data:`EDIT_REASONS`), ``comment``, ``editor``, ``signed_at`` (ISO 8601)
``draft``          optional (absent or ``null``), only for model drafts (``echo-report --batch``): how the
                   findings and impression were drafted (:class:`DraftInfo`: ``report``, ``sampler``,
                   ``model``, ``model_revision``, ``views``, ``warnings``, ``figures``, ``settings``,
                   ``batch_size``, ``study``); a draft may have empty sections (its warnings say so)
=================  =====================================================================================

**Error rows.** A study that could not be drafted is written as ``{"schema": "echo.study/1", "id": ...,
"error": "why"}`` with no report. :func:`read_jsonl` skips such rows and counts them (``errors=``), so every
reader of record files (``echo-eval --data``, the training loaders) goes past them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

SCHEMA = "echo.study/1"
VIEWS: tuple[str, ...] = ("frontal", "lateral", "pa", "ap", "unknown")
LANGUAGES: tuple[str, ...] = ("en", "zh")
SPLITS: tuple[str | None, ...] = ("train", "val", "test", None)
EDIT_REASONS: tuple[str, ...] = (
    "false finding", "missed finding", "mislocalised", "severity", "style", "ordering", "other",
)


class RecordError(ValueError):
    """A record that does not follow the schema; the message names the record and the field."""

    def __init__(self, record_id: str, field_name: str, problem: str, *, line: int | None = None):
        where = f"line {line}, " if line is not None else ""
        super().__init__(f"{where}record {record_id!r}, field {field_name!r}: {problem}")
        self.record_id, self.field_name, self.line = record_id, field_name, line


@dataclass(frozen=True)
class ImageRef:
    path: str
    view: str = "unknown"


@dataclass(frozen=True)
class Correction:
    draft_id: str
    model: str
    model_revision: str
    draft_findings: str
    draft_impression: str
    editor: str
    signed_at: str
    edit_reasons: tuple[str, ...] = ()
    comment: str = ""


@dataclass(frozen=True)
class DraftInfo:
    """How a drafted record was produced (``echo-report --batch``).

    Attributes:
        report: the report exactly as drafted (the record's findings and impression are its sections).
        sampler: the sampler's name.
        model: the checkpoint (folder, hub id or ``embedded:ROLE``).
        model_revision: the checkpoint's revision.
        views: the view of each image given to the model, in order (``pa``, ``ap``, ``lateral``, ``unknown``).
        warnings: input gating and report-check warnings, in words.
        figures: the run's figures (``RunFigures.to_json``: tokens, forward_passes, model_calls, seconds, ...).
        settings: decoding settings (max_new_tokens, temperature, seed, lang, ...).
        batch_size: studies decoded together.
        study: the StudyInstanceUID or folder the draft is of; only with ``--keep-paths`` (else None).
        replaced: drafts of other samplers this one replaced because they failed the report check (``--fallback``),
            in the order tried, each ``{sampler, model, model_revision, report, warnings, seconds, tokens}``;
            the key is left out of the JSON when empty.
    """

    report: str
    sampler: str
    model: str
    model_revision: str
    views: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = 1
    study: str | None = None
    replaced: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class StudyRecord:
    id: str
    findings: str
    impression: str
    images: tuple[ImageRef, ...] = ()
    indication: str | None = None
    language: str = "en"
    source: str = "unknown"
    split: str | None = None
    licence: str = "unknown"
    correction: Correction | None = None
    schema: str = SCHEMA
    raw_report: str | None = None
    draft: DraftInfo | None = None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def report(self) -> str:
        """The reference text in the model's output format (method.md §4.1)."""
        # No trailing space after an empty section: a lone space token before <eos> is an easy shortcut that a
        # small model learns to emit for every section.
        if self.language == "zh":
            return f"所见：{self.findings.strip()} 结论：{self.impression.strip()}".rstrip()
        return f"Findings: {self.findings.strip()} Impression: {self.impression.strip()}".rstrip()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["images"] = [dataclasses.asdict(i) for i in self.images]
        if self.correction is not None:
            data["correction"]["edit_reasons"] = list(self.correction.edit_reasons)
        if self.raw_report is None:  # optional field: files written before it existed stay byte-identical
            del data["raw_report"]
        if self.draft is None:  # likewise
            del data["draft"]
        else:
            data["draft"]["views"] = list(self.draft.views)
            data["draft"]["warnings"] = list(self.draft.warnings)
            if self.draft.replaced:
                data["draft"]["replaced"] = [dict(r) for r in self.draft.replaced]
            else:  # rows drafted without a fallback stay as they were
                del data["draft"]["replaced"]
        return data

    @classmethod
    def from_dict(cls, data: Any, *, line: int | None = None) -> "StudyRecord":
        """Parse and validate; every problem raises :class:`RecordError` naming the record and field."""
        if not isinstance(data, dict):
            raise RecordError("?", "(record)", f"expected a JSON object, got {type(data).__name__}", line=line)
        rid = data.get("id")
        if not isinstance(rid, str) or not rid.strip():
            raise RecordError(str(rid), "id", "must be a non-empty string", line=line)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecordError(rid, unknown[0], f"unknown field (known: {sorted(known)})", line=line)
        try:
            images = tuple(_image(rid, i, line) for i in _list(rid, "images", data.get("images", []), line))
            corr = data.get("correction")
            correction = _correction(rid, corr, line) if corr is not None else None
            draft = _draft(rid, data["draft"], line) if data.get("draft") is not None else None
            return cls(**{**data, "images": images, "correction": correction, "draft": draft})
        except RecordError as err:
            if err.line is None and line is not None:
                raise RecordError(err.record_id, err.field_name, str(err).split(": ", 1)[1], line=line) from None
            raise
        except TypeError as err:
            raise RecordError(rid, "(record)", str(err), line=line) from None


def _list(rid: str, name: str, value: Any, line: int | None) -> list:
    if not isinstance(value, list):
        raise RecordError(rid, name, f"must be a list, got {type(value).__name__}", line=line)
    return value


def _image(rid: str, item: Any, line: int | None) -> ImageRef:
    if isinstance(item, str):
        return ImageRef(path=item)
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        raise RecordError(rid, "images", f"each image needs a string 'path', got {item!r}", line=line)
    extra = set(item) - {"path", "view"}
    if extra:
        raise RecordError(rid, "images", f"unknown image keys {sorted(extra)}", line=line)
    return ImageRef(path=item["path"], view=item.get("view", "unknown"))


def _correction(rid: str, value: Any, line: int | None) -> Correction:
    if not isinstance(value, dict):
        raise RecordError(rid, "correction", f"must be an object, got {type(value).__name__}", line=line)
    names = {f.name for f in dataclasses.fields(Correction)}
    missing = sorted(n for n in names - set(value) if n not in ("edit_reasons", "comment"))
    if missing:
        raise RecordError(rid, "correction", f"missing {missing}", line=line)
    extra = sorted(set(value) - names)
    if extra:
        raise RecordError(rid, "correction", f"unknown keys {extra}", line=line)
    return Correction(**{**value, "edit_reasons": tuple(_list(rid, "correction.edit_reasons", value.get("edit_reasons", []), line))})


def _draft(rid: str, value: Any, line: int | None) -> DraftInfo:
    if not isinstance(value, dict):
        raise RecordError(rid, "draft", f"must be an object, got {type(value).__name__}", line=line)
    names = {f.name for f in dataclasses.fields(DraftInfo)}
    missing = sorted({"report", "sampler", "model", "model_revision"} - set(value))
    if missing:
        raise RecordError(rid, "draft", f"missing {missing}", line=line)
    extra = sorted(set(value) - names)
    if extra:
        raise RecordError(rid, "draft", f"unknown keys {extra}", line=line)
    views = tuple(_list(rid, "draft.views", value.get("views", []), line))
    warnings = tuple(_list(rid, "draft.warnings", value.get("warnings", []), line))
    replaced = tuple(_list(rid, "draft.replaced", value.get("replaced", []), line))
    if not all(isinstance(r, dict) for r in replaced):
        raise RecordError(rid, "draft.replaced", "must be a list of objects", line=line)
    return DraftInfo(**{**value, "views": views, "warnings": warnings, "replaced": replaced})


def validate(rec: StudyRecord) -> None:
    rid = rec.id
    if rec.schema != SCHEMA:
        raise RecordError(rid, "schema", f"unsupported schema {rec.schema!r}; this version reads {SCHEMA!r}")
    for name in ("findings", "impression", "source", "licence"):
        if not isinstance(getattr(rec, name), str):
            raise RecordError(rid, name, f"must be a string, got {type(getattr(rec, name)).__name__}")
    if not (rec.findings.strip() or rec.impression.strip()) and rec.draft is None:
        raise RecordError(rid, "findings", "findings and impression are both empty")
    if rec.raw_report is not None and not isinstance(rec.raw_report, str):
        raise RecordError(rid, "raw_report", f"must be a string or null, got {type(rec.raw_report).__name__}")
    if rec.indication is not None and not isinstance(rec.indication, str):
        raise RecordError(rid, "indication", f"must be a string or null, got {type(rec.indication).__name__}")
    if rec.language not in LANGUAGES:
        raise RecordError(rid, "language", f"must be one of {LANGUAGES}, got {rec.language!r}")
    if rec.split not in SPLITS:
        raise RecordError(rid, "split", f"must be one of {SPLITS}, got {rec.split!r}")
    for img in rec.images:
        if not img.path:
            raise RecordError(rid, "images", "empty image path")
        if img.view not in VIEWS:
            raise RecordError(rid, "images", f"view must be one of {VIEWS}, got {img.view!r}")
    if rec.correction is not None:
        for name in ("draft_id", "model", "model_revision", "draft_findings", "draft_impression", "editor", "comment"):
            value = getattr(rec.correction, name)
            if not isinstance(value, str):
                raise RecordError(rid, f"correction.{name}", f"must be a string, got {type(value).__name__}")
        bad = [r for r in rec.correction.edit_reasons if r not in EDIT_REASONS]
        if bad:
            raise RecordError(rid, "correction.edit_reasons", f"unknown reasons {bad}; allowed: {list(EDIT_REASONS)}")
        try:
            datetime.fromisoformat(rec.correction.signed_at)
        except (TypeError, ValueError):
            raise RecordError(rid, "correction.signed_at", f"not an ISO 8601 time: {rec.correction.signed_at!r}") from None


def is_error_row(data: Any) -> bool:
    """True for the row of a study that could not be drafted (an ``error`` and no report)."""
    return isinstance(data, dict) and data.get("error") is not None


def read_jsonl(path: str | Path, *, errors: list[int] | None = None) -> Iterator[StudyRecord]:
    """Yield the records of a JSONL file; a malformed line raises :class:`RecordError` with its line number.

    Error rows (:func:`is_error_row`) are skipped; their line numbers are appended to ``errors`` when given.
    """
    for record, _ in read_jsonl_lines(path, errors=errors):
        yield record


def read_jsonl_lines(path: str | Path, *, errors: list[int] | None = None) -> Iterator[tuple[StudyRecord, int]]:
    """:func:`read_jsonl` with each record's line number."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as err:
                raise RecordError("?", "(json)", f"{path.name}: invalid JSON ({err.msg})", line=n) from None
            if is_error_row(data):
                if errors is not None:
                    errors.append(n)
                continue
            yield StudyRecord.from_dict(data, line=n), n


def write_jsonl(records: Iterable[StudyRecord], path: str | Path) -> int:
    """Write records as JSON Lines (UTF-8); returns how many were written."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    return count


def resolve_image(record_path: str | Path, image: ImageRef) -> Path:
    """An image's path, relative paths taken from the JSONL file's folder."""
    p = Path(image.path)
    return p if p.is_absolute() else Path(record_path).parent / p
