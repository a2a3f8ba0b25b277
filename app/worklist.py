"""The worklist of the History & export tab: one row per study, with a thumbnail, and next / previous navigation.

Why a module without Gradio: what a row shows (thumbnail, the impression's first line, state, time) and which
study *Next unsigned* / *Previous* open are decisions worth testing without a server. The rows come from
:meth:`app.store.Store.worklist` (the search runs in SQL there).

Order: newest study first, as the History table has always listed them. *Next unsigned* opens the first unsigned
study below the one on the Draft tab (older), wrapping round to the top; *Previous* opens the study above it (any
state), so that a reader going down the list with *Next* can step back. With no study on the Draft tab (or one
the search hides) *Next unsigned* starts at the top and *Previous* opens the top row.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from .store import WorklistEntry

__all__ = ["THUMBNAIL_PX", "WORKLIST_DATATYPES", "WORKLIST_HEADERS", "WORKLIST_LIMIT", "WorklistView",
           "draft_state", "first_line", "neighbour", "state_label", "thumbnail_uri", "when", "worklist_rows"]

#: Thumbnail size (the longer side, in CSS pixels).
THUMBNAIL_PX = 96
#: Studies listed at most (the newest; the search reaches older ones): each row carries its thumbnail inline.
WORKLIST_LIMIT = 200
WORKLIST_HEADERS = ["view", "impression (first line)", "indication", "state", "time (UTC)", "views", "study",
                    "draft"]
#: Dataframe datatypes of the columns: the thumbnail is a Markdown image with a ``data:`` URI.
WORKLIST_DATATYPES = ["markdown", "str", "str", "str", "str", "number", "str", "str"]
SHORT_ID = 8
#: Longest impression line shown (the rest is on the Draft tab).
LINE_CHARS = 120


@dataclass(frozen=True)
class WorklistView:
    """What the worklist table shows (a ``gr.State`` beside it): the search it was filtered by and, per row, the
    full study and draft ids behind the short ones on screen."""

    query: str = ""
    ids: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, entries: Sequence[WorklistEntry], *, query: str) -> WorklistView:
        return cls(query=query, ids=tuple((e.study_id, e.draft_id or "") for e in entries))

    def full_ids(self, short_study: str, short_draft: str) -> tuple[str, str] | None:
        """The (study id, draft id) of the row showing these short ids, or None (e.g. a stale table)."""
        for study_id, draft_id in self.ids:
            if study_id[:SHORT_ID] == short_study and draft_id[:SHORT_ID] == short_draft:
                return study_id, draft_id
        return None


@functools.lru_cache(maxsize=1024)
def _thumbnail(path: str, size: int, mtime_ns: int) -> str:
    with Image.open(path) as img:
        small = img.convert("L")
        small.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnail_uri(path: Path | None, *, size: int = THUMBNAIL_PX) -> str:
    """A ``data:`` URI of a grey PNG thumbnail of ``path`` (longer side ``size``); "" when there is no image.

    The stored PNGs are named by their pixel hash, so a thumbnail is cached per file (and its modification time).
    """
    if size < 8:
        raise ValueError(f"a thumbnail is at least 8 pixels, got {size!r}")
    if path is None or not Path(path).is_file():
        return ""
    return _thumbnail(str(path), size, Path(path).stat().st_mtime_ns)


def first_line(text: str, *, limit: int = LINE_CHARS) -> str:
    """The first non-empty line of ``text``, cut at ``limit`` characters (with an ellipsis)."""
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def state_label(entry: WorklistEntry) -> str:
    """``no draft``, ``draft``, ``edited v2`` or ``signed``; a draft nobody has edited yet that carries warnings
    says how many (``draft · ⚠ 3 warnings``), so a reader going down the list sees which drafts to distrust
    before opening them."""
    if entry.state == "edited":
        return f"edited v{entry.versions}"
    return draft_state(entry.state, entry.warnings)


def draft_state(state: str, warnings: int) -> str:
    """A draft's state with, while nobody has edited it (``draft``), how many warnings it carries (the History
    tab's worklist and its table of all drafts say it the same way)."""
    if state == "draft" and warnings:
        return f"draft · ⚠ {warnings} warning{'s' if warnings > 1 else ''}"
    return state


def when(at: datetime) -> str:
    """A readable UTC time: ``2026-12-07 01:17``."""
    return f"{at:%Y-%m-%d %H:%M}"


def worklist_rows(entries: Sequence[WorklistEntry]) -> list[list[Any]]:
    """The table's rows (:data:`WORKLIST_HEADERS`): thumbnail, the impression's first line (else the findings'),
    indication, state, time of the latest event, views, short study and draft ids."""
    rows = []
    for e in entries:
        uri = thumbnail_uri(e.first_image)
        image = f"![first view of study {e.study_id[:SHORT_ID]}]({uri})" if uri else ""
        line = first_line(e.impression) or first_line(e.findings)
        rows.append([image, line, e.indication, state_label(e), when(e.updated_at),
                     e.views, e.study_id[:SHORT_ID], (e.draft_id or "")[:SHORT_ID]])
    return rows


def neighbour(entries: Sequence[WorklistEntry], study_id: str, *, direction: str) -> WorklistEntry:
    """The study *Next unsigned* (``direction="next"``) or *Previous* (``"previous"``) opens from ``study_id``.

    Raises:
        ValueError: the direction is unknown, or there is no such study (the message says why).
    """
    if direction not in ("next", "previous"):
        raise ValueError(f"direction must be 'next' or 'previous', got {direction!r}")
    if not entries:
        raise ValueError("the worklist is empty (or the search matches no study): nothing to open")
    ids = [e.study_id for e in entries]
    here = ids.index(study_id) if study_id in ids else None
    if direction == "previous":
        if here is None:
            return entries[0]
        if here == 0:
            raise ValueError(f"study {study_id[:SHORT_ID]!r} is the first of the worklist: no previous study")
        return entries[here - 1]
    start = 0 if here is None else here + 1
    for e in [*entries[start:], *entries[:start]]:
        if not e.signed and e.study_id != study_id:
            return e
    raise ValueError(f"no other unsigned study in the worklist ({len(entries)} "
                     f"stud{'y' if len(entries) == 1 else 'ies'}, every other one signed)")
