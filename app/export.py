"""Export signed corrections as a training data set in the shared study-record format.

The zip holds one folder::

    echo-corrections-<UTC time>/
        records.jsonl      one echo.study/1 record per signed draft (see echo_model.data.records)
        images/<hash>.png  the de-identified views the records point to (relative paths)
        README.txt         what this is, the licence, and the not-for-clinical-use notice

Why this layout: ``echo_model.data.load_dataset`` reads the folder (or ``records.jsonl``) with its generic
record adapter, so corrections flow back into training without a converter. Each record's
``findings``/``impression`` are the signed text, with one conversion for training: the Draft tab's region
lines (``Hila: ...``) become plain findings (labels removed, lines joined with a space; see
:func:`echo_model.data.report_text.findings_from_region_text`), the model's own format. The stored record
in the app keeps the signed text verbatim. ``correction`` carries the model's draft, the model and
revision, the edit reasons, the comment (with any addenda) and who signed when.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from echo_model.data.records import LANGUAGES, VIEWS, Correction, ImageRef, StudyRecord, write_jsonl
from echo_model.data.report_text import findings_from_region_text

from .store import DraftInfo, Store, StudyInfo

__all__ = ["EXPORT_PREFIX", "ExportResult", "build_record", "export_corrections", "parse_day", "prune_exports"]

EXPORT_PREFIX = "echo-export-"
RECORDS_FILE = "records.jsonl"
_README = """ECHO radiologist corrections ({count} records, exported {when} UTC by {who}).

records.jsonl follows the echo.study/1 study-record schema (echo_model/data/records.py); image paths are
relative to this folder. findings/impression are the signed text; "correction" holds the model draft.
Images are de-identified PNGs (pixels only); burned-in text in the pixels is NOT removed.

Licence of the text and images: {licence}

RESEARCH USE ONLY. NOT FOR CLINICAL USE. The drafts were written by a research model.
"""


@dataclass(frozen=True)
class ExportResult:
    """The zip written, and what it holds."""

    zip_path: Path
    records: int
    images: int


def parse_day(value: str | float | None, *, name: str) -> date | None:
    """A filter day from a date picker or an API string (``YYYY-MM-DD``, an ISO datetime, or a timestamp).

    Why strict: the value comes from any API client. Anything that is not a whole day, ISO datetime or
    finite timestamp is refused with the value named, rather than cut to its first ten characters or
    failing deep inside ``datetime``. (No part of it reaches a file name: exports are named by their time.)
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    refused = ValueError(f"{name}: {value!r:.80} is not a date; use YYYY-MM-DD")
    if isinstance(value, bool):
        raise refused
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc).date()
        except (ValueError, OverflowError, OSError):  # NaN, infinities, years outside 1..9999
            raise refused from None
    text = str(value).strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise refused from None
    return (moment.astimezone(timezone.utc) if moment.tzinfo else moment).date()


def _record_view(view: str) -> str:
    return view if view in VIEWS else "unknown"


def build_record(draft: DraftInfo, study: StudyInfo, *, licence: str) -> StudyRecord:
    """The study record of one signed draft (images referenced as ``images/<hash>.png``).

    ``findings`` is the signed findings as plain training text: region labels removed and lines joined
    (:func:`~echo_model.data.report_text.findings_from_region_text`); the impression is as signed. The
    store keeps the signed text verbatim; only this export converts it.
    """
    if draft.signed_at is None or draft.signed_by is None:
        raise ValueError(f"draft {draft.id!r} is not signed; only signed reports are exported")
    findings, impression = draft.current
    reasons: list[str] = []
    for version in draft.versions:
        reasons.extend(r for r in version.reasons if r not in reasons)
    # Each comment once: a comment left in the box is sent again with every later save and with the signature.
    comments = list(dict.fromkeys(v.comment.strip() for v in draft.versions if v.comment.strip()))
    comments += [f"Addendum ({a.created_at:%Y-%m-%d %H:%M} UTC, {a.author}): {a.comment}" for a in draft.addenda]
    return StudyRecord(
        id=draft.id,
        findings=findings_from_region_text(findings),
        impression=impression,
        images=tuple(ImageRef(path=f"images/{img.content_hash}.png", view=_record_view(img.view)) for img in study.images),
        indication=draft.settings.get("indication") or None,
        language=draft.language if draft.language in LANGUAGES else "en",
        source="echo_app",
        licence=licence,
        correction=Correction(
            draft_id=draft.id, model=draft.model, model_revision=draft.model_revision,
            draft_findings=draft.findings, draft_impression=draft.impression, editor=draft.signed_by,
            signed_at=draft.signed_at.isoformat(), edit_reasons=tuple(reasons), comment="\n".join(comments),
        ),
    )


def export_corrections(
    store: Store,
    owner: str,
    *,
    out_dir: Path,
    since: date | None = None,
    until: date | None = None,
    licence: str = "unknown",
) -> ExportResult:
    """Zip ``owner``'s signed corrections signed on days ``since``..``until`` (inclusive, UTC) into ``out_dir``.

    Raises:
        ValueError: ``since`` after ``until``, or no signed report in the range (an empty data set is
            almost always a wrong filter, so it is refused with the range in the message).
    """
    if since and until and since > until:
        raise ValueError(f"the start day {since} is after the end day {until}")
    start = datetime.combine(since, datetime.min.time(), tzinfo=timezone.utc) if since else None
    end = datetime.combine(until + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc) if until else None
    pairs = store.signed_drafts(owner, since=start, until=end)
    if not pairs:
        span = f"{since or 'the beginning'} to {until or 'today'}"
        raise ValueError(f"no signed report of user {owner!r} from {span}: sign a report first or widen the dates")
    stamp = datetime.now(timezone.utc)
    name = f"echo-corrections-{stamp:%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=out_dir)) / name
    (staging / "images").mkdir(parents=True)
    records = [build_record(draft, study, licence=licence) for draft, study in pairs]
    write_jsonl(records, staging / RECORDS_FILE)
    hashes = {img.content_hash: img.path for _, study in pairs for img in study.images}
    for content_hash, path in hashes.items():
        shutil.copyfile(path, staging / "images" / f"{content_hash}.png")
    (staging / "README.txt").write_text(
        _README.format(count=len(records), when=f"{stamp:%Y-%m-%d %H:%M}", who=owner, licence=licence),
        encoding="utf-8",
    )
    zip_path = out_dir / f"{name}.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for file in sorted(staging.rglob("*")):
            if file.is_file():
                kind = zipfile.ZIP_STORED if file.suffix == ".png" else zipfile.ZIP_DEFLATED
                zf.write(file, file.relative_to(staging.parent).as_posix(), compress_type=kind)
    shutil.rmtree(staging.parent)
    store.record_export(owner, records=len(records), images=len(hashes))
    return ExportResult(zip_path=zip_path, records=len(records), images=len(hashes))


def prune_exports(root: Path, *, max_age_s: float = 3600.0, keep: Sequence[Path] = ()) -> int:
    """Delete export folders under ``root`` older than ``max_age_s`` (exports hold clinical text)."""
    if not root.is_dir():
        return 0
    removed = 0
    now = time.time()
    for child in root.iterdir():
        if child.name.startswith(EXPORT_PREFIX) and child not in keep and now - child.stat().st_mtime > max_age_s:
            shutil.rmtree(child, ignore_errors=True)
            removed += 1
    return removed
