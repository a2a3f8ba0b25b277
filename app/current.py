"""The study on screen: one :class:`Current` per browser session (held in a ``gr.State``) and its banner.

Why a state object: every Draft-tab action must act on the study and draft the reader is looking at. The
handlers compare what an action names (draft id, version) with this object and refuse a mismatch in words;
upload, *New study* and opening a history row replace it, which resets the editor with it.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field, replace
from typing import Literal

__all__ = ["Current", "DraftState", "banner_markdown", "limitation_html", "warnings_html"]

#: What the editor holds: nothing drafted yet, a draft being written, the draft as written, a saved edit, signed.
DraftState = Literal["", "drafting", "draft", "edited", "signed"]


@dataclass(frozen=True)
class Current:
    """The study and draft on screen in one browser session.

    Attributes:
        study_id: the study shown in the viewer ("" = none).
        views: its views, e.g. ``("pa", "lateral")``.
        draft_id: the draft in the editor ("" = none drafted for this study yet).
        version: saved versions the editor's text is based on (the store refuses a save from another one).
        state: see :data:`DraftState`.
        indication: as typed when drafting (or stored with the draft).
        model: the model that wrote the draft.
        warnings: the draft's warnings (input gating and report checks).
    """

    study_id: str = ""
    views: tuple[str, ...] = ()
    draft_id: str = ""
    version: int | None = None
    state: DraftState = ""
    indication: str = ""
    model: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def with_draft(self, draft_id: str, *, version: int, state: DraftState, **changes: object) -> Current:
        """This study with a draft in the editor."""
        return replace(self, draft_id=draft_id, version=version, state=state, **changes)  # type: ignore[arg-type]


def banner_markdown(current: Current | None) -> str:
    """The line above the editor: study label (no patient data), views, indication, model and state."""
    if current is None or not current.study_id:
        return "**No study on screen.** Upload the views of one study, or open a draft from *History & export*."
    views = ", ".join(current.views) or "no view"
    count = f"{len(current.views)} view{'' if len(current.views) == 1 else 's'}"
    parts = [f"**Study `{current.study_id[:8]}`**", f"{count} ({views})"]
    if current.indication:
        parts.append(f"indication: {current.indication}")
    if current.model:
        parts.append(f"model: {current.model}")
    state = {
        "": "no draft yet: press *Generate*",
        "drafting": "**drafting…**",
        "draft": "**draft** (not edited, not signed)",
        "edited": f"**edited** (version {current.version}), not signed",
        "signed": "**signed**: locked, changes go in an addendum",
    }[current.state]
    parts.append(state)
    if current.draft_id:
        parts.append(f"draft `{current.draft_id[:8]}`")
    return " · ".join(parts)


def warnings_html(warnings: tuple[str, ...] | list[str]) -> str:
    """The draft's warnings as an amber box (empty string when there are none)."""
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    n = len(warnings)
    return (f'<div class="echo-draft-warnings" role="alert"><strong>⚠ {n} warning{"" if n == 1 else "s"} on this '
            f"draft: check before signing</strong> (signing needs <em>Sign anyway</em>)<ul>{items}</ul></div>")


def limitation_html(limitation: str) -> str:
    """The chosen model's limitation as a grey box beside the draft (empty string when there is none)."""
    if not limitation:
        return ""
    return f'<div class="echo-model-limitation" role="note"><strong>About this model:</strong> {html.escape(limitation)}</div>'
