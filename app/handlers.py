"""Gradio callbacks: component values in, component values out; the work happens in services and the store.

Why a class: every callback needs the same :class:`~app.service.Services` (settings, model service,
store); binding them once keeps the callbacks' signatures exactly what Gradio shows API clients.
Callback parameters are positional-or-keyword on purpose (Gradio passes component values positionally
and injects ``gr.Request``/``gr.Progress`` by position), an exception to the keyword-only rule.

Error policy: problems the user can fix (unreadable upload, unsupported language, signed report...)
raise ``gr.Error`` with the message naming the problem, which API clients receive verbatim; anything
else is logged with its traceback and reported by type only (internal details stay in the server log).
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from echo_model.data.report_text import format_report

from .current import Current, banner_markdown, limitation_html, warnings_html
from .evidence import asserted_findings, evidence_html, findings_html, sentence_evidence
from .export import EXPORT_PREFIX, export_corrections, parse_day, prune_exports
from .service import (
    MASK_GLYPH,
    Services,
    TokenPiece,
    confidence_band,
    editor_findings,
    ingest_uploads,
    load_study_images,
    offers_teacher_redraft,
    redraft_prefix,
    report_language,
    split_report,
)
from .store import DraftInfo, NewDraft, SignedReportError, StoreError, StudyInfo
from .viewer import StudyView, render_study, viewer_html
from .worklist import WORKLIST_LIMIT, WorklistView, draft_state, neighbour, worklist_rows

__all__ = ["CURRENT_FIELDS", "DRAFT_FIELDS", "VIEWER_FIELDS", "WINDOW_FIELDS", "DraftView", "Handlers", "as_paths",
           "user_errors", "waiting_progress"]

log = logging.getLogger(__name__)

#: Categories of the report view (HighlightedText), in legend order.
REPORT_COLOURS: dict[str, str] = {
    "high": "#2e7d32",
    "medium": "#f9a825",
    "low": "#c62828",
    "masked": "#555555",
    "kept": "#1565c0",
}
#: Output order of every callback that shows a draft (generate, re-draft, open).
DRAFT_FIELDS: tuple[str, ...] = (
    "report_view", "findings", "impression", "copy_text", "summary", "timing", "blocks", "warnings",
    "study_id", "draft_id", "status", "version", "draft_warnings", "banner", "current",
    "evidence",
)
#: Outputs of ``refresh_current`` (chained after save, sign and addendum: the session state follows the store).
CURRENT_FIELDS: tuple[str, ...] = ("version", "banner", "current", "draft_warnings")
#: Output order of the viewer callbacks (upload, open study).
VIEWER_FIELDS: tuple[str, ...] = ("study_id", "view_select", "viewer", "view_info", "center", "width", "warnings",
                                  "preset", "invert", "view_label")
#: Outputs of the viewer's window callbacks (choose a view, a preset, or a view position).
WINDOW_FIELDS: tuple[str, ...] = ("viewer", "view_info", "center", "width", "view_label")
BLOCK_HEADERS = ["block", "ms", "tokens", "min confidence", "text"]
HISTORY_HEADERS = ["created (UTC)", "status", "sampler", "model", "signed (UTC)", "views", "study", "draft"]
DEFAULT_WINDOW = (128.0, 256.0)
#: Studies whose upload seconds are kept for the Draft summary's "upload to last block".
UPLOAD_TIMES_KEPT = 4096

# Errors whose message is written for the user, naming the file/object and the problem: ImageInputError and
# the store's errors are ValueErrors, CheckpointError and NotImplementedError are RuntimeErrors.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, FileNotFoundError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn our errors into ``gr.Error`` with their message; hide the details of anything unexpected."""
    try:
        yield
    except gr.Error:
        raise
    except _USER_ERRORS as err:
        # Not printed to the server log: these messages name the uploaded file, and file names often hold PHI.
        raise gr.Error(str(err), print_exception=False) from None
    except Exception as err:
        log.exception("unexpected error in a request")
        raise gr.Error(f"internal error ({type(err).__name__}); the server log has the details") from None


@dataclass
class DraftView:
    """Everything the Draft tab shows about one draft; :meth:`outputs` follows :data:`DRAFT_FIELDS`."""

    report_view: list[tuple[str, str | None]] = field(default_factory=list)
    findings: str = ""
    impression: str = ""
    language: str = "en"
    summary: str = ""
    timing: dict[str, Any] = field(default_factory=dict)
    blocks: list[list[Any]] = field(default_factory=list)
    warnings: str = ""
    study_id: str = ""
    draft_id: str = ""
    status: str = ""
    current: Current = field(default_factory=Current)
    evidence: str = ""  # the draft sentence by sentence (HTML, app.evidence)

    def outputs(self) -> tuple[Any, ...]:
        """Plain values (API clients get strings); whether the editor is locked is set by ``editor_lock``."""
        copy = (format_report(self.findings, self.impression, lang=report_language(self.language))
                if (self.findings or self.impression) else "")
        cur = self.current
        return (self.report_view, self.findings, self.impression, copy, self.summary, self.timing, self.blocks,
                self.warnings, self.study_id, self.draft_id, self.status, cur.version,
                warnings_html(cur.warnings), banner_markdown(cur), cur, self.evidence)


def _study_current(study: StudyInfo | None) -> Current:
    """The session state of a study just put on screen (no draft in the editor)."""
    if study is None:
        return Current()
    return Current(study_id=study.id, views=tuple(img.view for img in study.images))


def _draft_current(draft: DraftInfo, study: StudyInfo) -> Current:
    state = "signed" if draft.signed_at else ("edited" if draft.versions else "draft")
    return _study_current(study).with_draft(
        draft.id, version=len(draft.versions), state=state, indication=draft.settings.get("indication") or "",
        model=draft.settings.get("model_label") or draft.model, warnings=tuple(draft.warnings))


def _bind(current: Current | None, draft_id: str | None, version: float | None) -> tuple[str, int | None]:
    """The draft and version an action acts on, refusing an action with no draft to act on.

    The browser sends the draft id and version of its editor (boxes that change only together with the
    session's :class:`Current`, which names the study in the refusal); an API call names its draft, with the
    version its text is based on or without one (no version check, as before versions existed). Neither is
    taken from the session state: a ``gradio_client`` session keeps the state of its last ``/generate``, which
    is not what a later call names. The store refuses a version that is not the stored one.
    """
    draft_id = (draft_id or "").strip()
    current = current if isinstance(current, Current) else Current()
    if not draft_id:
        where = f"study {current.study_id[:8]!r}" if current.study_id else "the screen"
        raise ValueError(f"no draft on {where}: press Generate first (or open a draft from History & export)")
    if version is not None and (not math.isfinite(version) or int(version) != version or version < 0):
        raise ValueError(f"a draft version is a whole number >= 0, got {version!r}")
    return draft_id, None if version is None else int(version)


def _editor_text(draft: DraftInfo) -> tuple[str, str]:
    """(findings, impression) as the editor shows a stored draft: the last saved text verbatim; an unedited
    draft's findings one line per region (:func:`~app.service.editor_findings`).

    The drafted report is split again (not the stored sections), so a garbled draft's repeated headers are not
    left in a section.
    """
    if draft.versions:
        return draft.current
    findings, impression = split_report(draft.report) if draft.report.strip() else draft.current
    return editor_findings(findings), impression


def _lines(text: str) -> str:
    """Text for Markdown with its line breaks kept (region lines stay one per line in the sign confirmation)."""
    return "  \n".join(line.strip() for line in text.strip().splitlines())


def _block_rows(trace: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """The per-block table: index, milliseconds, tokens, lowest commit confidence, text."""
    return [[t["block"], t["ms"], len(t["token_ids"]), round(min(t["confidences"], default=0.0), 3), t["text"]]
            for t in trace]


def _pieces_view(pieces: Sequence[TokenPiece]) -> list[tuple[str, str | None]]:
    return [(p.text, p.band) for p in pieces]


def _trace_pieces(draft: DraftInfo) -> list[tuple[str, float | None]]:
    """A stored draft's text as ``(text, probability)`` pieces for the sentence view: the kept prefix (no
    probability), then each block's token pieces; a draft stored before pieces were kept gives each block's
    text with its lowest confidence (coarser, never less cautious)."""
    prefix = draft.settings.get("prefix")
    pieces: list[tuple[str, float | None]] = [(prefix + " ", None)] if prefix else []
    for block in draft.trace:
        if block.get("pieces") is not None:
            pieces += [(str(text), float(conf)) for text, conf in block["pieces"]]
        elif block.get("text"):
            pieces.append((block["text"], min(block["confidences"]) if block.get("confidences") else None))
    return pieces


def _status_text(draft: DraftInfo) -> str:
    if draft.signed_at:
        addenda = f" · {len(draft.addenda)} addend{'um' if len(draft.addenda) == 1 else 'a'}" if draft.addenda else ""
        return (f"**Signed** by {draft.signed_by} at {draft.signed_at:%Y-%m-%d %H:%M} UTC; the report is locked, "
                f"changes go in an addendum{addenda}.")
    if draft.versions:
        last = draft.versions[-1]
        return f"**Edited** (version {len(draft.versions)} saved at {last.created_at:%H:%M:%S} UTC), not signed."
    return "**Draft**, not edited, not signed. Check every sentence against the images before signing."


def _summary(timing: dict[str, Any]) -> str:
    n = timing["blocks"]
    parts = [f"{n} block{'' if n == 1 else 's'}", f"first block {timing['time_to_first_block_s']:.2f} s"]
    which = "last" if timing.get("done") else "latest"
    if timing.get("upload_to_last_block_s") is not None:  # the views were uploaded before Generate was pressed
        parts.append(f"upload to {which} block {timing['upload_to_last_block_s']:.2f} s (de-identifying and "
                     f"storing the upload {timing['upload_s']:.2f} s + from Generate {timing['end_to_end_s']:.2f} s: "
                     "reading the images, waiting for and loading the model included; time spent typing excluded)")
    elif timing.get("end_to_end_s") is not None:  # drafts stored before it was measured have none
        parts.append(f"end to end {timing['end_to_end_s']:.2f} s (from Generate to the {which} block: reading the "
                     "images, waiting for and loading the model included)")
    if timing.get("done"):
        parts += [f"total {timing['total_s']:.2f} s", f"{timing['tokens']} tokens",
                  f"{timing['tokens_per_forward']:.2f} tokens/forward"]
    else:
        parts += [f"elapsed {timing['elapsed_s']:.2f} s", f"last block {timing['per_block_ms'][-1]:.0f} ms"]
    if timing.get("batch_rows", 1) > 1:
        others = timing["batch_rows"] - 1
        parts.append(f"forwards shared with {others} other draft{'' if others == 1 else 's'}")
    parts.append(f"{timing['sampler']} · {timing['model']} (revision {timing['revision']})")
    return " · ".join(parts)


def _history_rows(rows: Sequence[Any]) -> list[list[Any]]:
    return [[f"{r.created_at:%Y-%m-%d %H:%M}", draft_state(r.status, r.warnings), r.sampler, r.model,
             f"{r.signed_at:%Y-%m-%d %H:%M}" if r.signed_at else "", r.views, r.study_id, r.draft_id or ""]
            for r in rows]


def _view_info(study: StudyInfo, index: int) -> str:
    img = study.images[index]
    meta = img.metadata
    bits = [f"**{img.label}** · {meta.get('source_format', '?').upper()} · {img.view}"]
    if meta.get("modality"):
        bits.append(f"modality {meta['modality']}")
    if meta.get("window_source") and meta.get("window_source") != "none":
        centre, width = meta.get("window_center"), meta.get("window_width")
        bits.append(f"window C {centre} / W {width} ({meta['window_source']})")
    bits.append(f"chest-likeness {img.cxr_likeness:.2f}")
    depth = ("the original pixel values (16-bit copy)" if img.original_path is not None
             else "the stored 8-bit image (the file had no deeper values)")
    return " · ".join(bits) + f".  \nLevel/Window, presets and invert act on {depth}."


def _window_sliders(shown: StudyView) -> tuple[Any, Any]:
    """Level and Window sliders set to the chosen view's window, their ranges following its values."""
    r, w = shown.sliders, shown.window
    return (gr.update(minimum=r.center_min, maximum=r.center_max, step=r.step, value=round(w.center, 6)),
            gr.update(minimum=1, maximum=r.width_max, step=r.step, value=round(w.width, 6)))


def _view_label_choice(study: StudyInfo, index: int) -> Any:
    """The *View position* menu: answerable for a view whose file does not say (PNG, JPEG, DICOM without it)."""
    img = study.images[index]
    askable = img.metadata.get("source_format") != "dicom" or img.view == "unknown"
    return gr.update(value=img.view, interactive=askable,
                     label=f"View position of {img.label}" + ("" if askable else " (from the DICOM header)"))


class Handlers:
    """The app's callbacks, bound to one :class:`Services`."""

    def __init__(self, services: Services):
        self.services = services
        self.settings = services.settings
        self.store = services.store
        self.drafting = services.drafting
        # Exports hold clinical text: a private temporary folder, pruned after an hour (see prune_exports).
        self.export_root = Path(tempfile.gettempdir()) / "echo-exports"
        # Seconds the latest upload of each study took to de-identify and store (the front of "upload to last
        # block"); in memory only, the newest UPLOAD_TIMES_KEPT studies.
        self._upload_seconds: OrderedDict[str, float] = OrderedDict()
        self._upload_lock = threading.Lock()

    def _user(self, request: gr.Request | None) -> str:
        name = getattr(request, "username", None) if request is not None else None
        return str(name) if name else self.settings.local_user

    # ------------------------------------------------------------------ upload and viewer
    def upload(self, files: list[str] | None, study_id: str = "", request: gr.Request | None = None) -> tuple[Any, ...]:
        """De-identify and store uploaded views (originals deleted); show the first. Outputs: VIEWER_FIELDS + files."""
        with user_errors():
            if not files:
                return (*self._viewer(None, 0), None)
            started = time.perf_counter()
            study, warnings = ingest_uploads(
                as_paths(files), store=self.store, owner=self._user(request),
                upload_cache_dir=self.settings.upload_cache_dir, study_id=study_id or None,
            )
            self._remember_upload(study.id, time.perf_counter() - started)
            outputs = list(self._viewer(study, len(study.images) - len(as_paths(files))))
            outputs[VIEWER_FIELDS.index("warnings")] = "\n".join(warnings)
            return (*outputs, None)

    def _remember_upload(self, study_id: str, seconds: float) -> None:
        with self._upload_lock:
            self._upload_seconds[study_id] = round(seconds, 4)
            self._upload_seconds.move_to_end(study_id)
            while len(self._upload_seconds) > UPLOAD_TIMES_KEPT:
                self._upload_seconds.popitem(last=False)

    def upload_seconds(self, study_id: str) -> float | None:
        """How long the latest upload of ``study_id`` took to de-identify and store (None: not uploaded here)."""
        with self._upload_lock:
            return self._upload_seconds.get(study_id)

    def new_study(self) -> tuple[Any, ...]:
        """Forget the current study in this browser tab (nothing is deleted). Outputs: VIEWER_FIELDS."""
        return self._viewer(None, 0)

    def begin_draft(self, study_id: str = "", current: Current | None = None) -> tuple[Any, ...]:
        """Clear the previous draft (text, ids, summary, warnings) before drafting, so nothing stale shows under
        the progress line and nothing can be saved to the old draft meanwhile. Outputs: DRAFT_FIELDS."""
        base = current if isinstance(current, Current) and current.study_id == study_id else Current(study_id=study_id)
        now = Current(study_id=base.study_id, views=base.views, state="drafting")
        return DraftView(study_id=study_id, status="Drafting: waiting for the model…", current=now).outputs()

    def draft_stopped(self, current: Current | None = None) -> tuple[str, Current, str]:
        """After *Stop*: nothing was saved, the study stays on screen without a draft. Outputs: banner, state, status."""
        base = current if isinstance(current, Current) else Current()
        if base.state != "drafting":
            return banner_markdown(base), base, gr.skip()
        now = Current(study_id=base.study_id, views=base.views)
        return banner_markdown(now), now, "**Stopped**: the partial draft was not saved; press *Generate* again."

    def study_opened(self, study_id: str = "", request: gr.Request | None = None) -> tuple[Any, ...]:
        """Bind the editor to the study now on screen: no draft, empty editor and draft view. Outputs: DRAFT_FIELDS.

        Chained after upload, *New study* and opening a study, so nothing of the previous study's draft can be
        saved, signed or explained while another study is shown.
        """
        with user_errors():
            study = self.store.get_study(study_id, self._user(request)) if (study_id or "").strip() else None
            current = _study_current(study)
            return DraftView(study_id=current.study_id, current=current).outputs()

    def show_study(self, study_id: str, request: gr.Request | None = None) -> tuple[Any, ...]:
        """Show the views of a stored study. Outputs: VIEWER_FIELDS."""
        with user_errors():
            study = self.store.get_study(study_id, self._user(request)) if study_id else None
            return self._viewer(study, 0)

    def _viewer(self, study: StudyInfo | None, index: int) -> tuple[Any, ...]:
        """A study put on screen: every view side by side at its file window, not inverted. Outputs: VIEWER_FIELDS."""
        if study is None or not study.images:
            return ("", gr.update(choices=[], value=None), viewer_html([]), "", *DEFAULT_WINDOW, "", "default",
                    False, gr.update(value="unknown", interactive=False, label="View position"))
        index = min(max(index, 0), len(study.images) - 1)
        shown = render_study(study, selected=study.images[index].position)
        notes = "\n".join(f"{img.label}: {w}" for img in study.images for w in img.warnings)
        return (study.id, gr.update(choices=_view_choices(study), value=study.images[index].position), shown.html,
                _view_info(study, index), *_window_sliders(shown), notes, "default", False,
                _view_label_choice(study, index))

    def select_view(self, study_id: str, view: int | None, preset: str = "default", invert: bool = False,
                    request: gr.Request | None = None) -> tuple[Any, ...]:
        """Choose a view or a preset: every view under the preset, the sliders at the chosen view's preset
        window. Outputs: WINDOW_FIELDS."""
        with user_errors():
            if not (study_id or "").strip():
                return viewer_html([]), "", gr.skip(), gr.skip(), gr.skip()
            study = self.store.get_study(study_id.strip(), self._user(request))
            shown = render_study(study, selected=_position(view), preset=preset or "default", invert=bool(invert))
            return (shown.html, _view_info(study, shown.index), *_window_sliders(shown),
                    _view_label_choice(study, shown.index))

    def set_view_label(self, study_id: str, view: int | None, label: str, preset: str = "default",
                       invert: bool = False, request: gr.Request | None = None) -> tuple[Any, ...]:
        """Store the view position (PA, AP, lateral) of the chosen view, asked once for a PNG or JPEG.
        Outputs: view menu, viewer, view details."""
        with user_errors():
            if not (study_id or "").strip():
                raise ValueError("no study on screen: upload views first, then set their view position")
            position = _position(view)
            if position is None:
                raise ValueError(f"choose a view to label first (got view {view!r})")
            study = self.store.set_view(study_id.strip(), self._user(request), position=position, view=label)
            shown = render_study(study, selected=position, preset=preset or "default", invert=bool(invert))
            return (gr.update(choices=_view_choices(study), value=position), shown.html,
                    _view_info(study, shown.index))

    def render_view(self, study_id: str, view: int | None, center: float = 128.0, width: float = 256.0,
                    preset: str = "default", invert: bool = False,
                    request: gr.Request | None = None) -> tuple[str, str]:
        """The views re-windowed: the chosen one at the sliders' centre/width (its file units), the others under
        the preset; ``invert`` swaps black and white. Outputs: viewer, view_info."""
        with user_errors():
            if not study_id:
                return viewer_html([]), ""
            study = self.store.get_study(study_id, self._user(request))
            shown = render_study(study, selected=_position(view), preset=preset or "default", invert=bool(invert),
                                 window=(float(center), float(width)))
            return shown.html, _view_info(study, shown.index)

    # ------------------------------------------------------------------ drafting
    def generate(
        self,
        files: list[str] | None = None,
        indication: str = "",
        language: str = "en",
        model: str = "",
        sampler: str = "echo",
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        threshold: float = 0.85,
        seed: int = 0,
        study_id: str = "",
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008  (Gradio injects progress through this default)
    ) -> Iterator[tuple[Any, ...]]:
        """Draft a report for the uploaded views (or the views of ``study_id``), one update per block.

        Outputs follow :data:`DRAFT_FIELDS`; the last update carries the saved draft's id. The uploads are
        stored (de-identified, originals deleted) first; then the draft waits for a slot on the device, or is
        refused at once with "The drafting queue is full ..." when every slot and waiting place is taken.

        A draft that fails the report check is drafted again by each fallback sampler in turn
        (:meth:`DraftingService.fallback_for`: ``ECHO_FALLBACK``, or the teacher then AR for the embedded family's
        one-step drafts), in the same slot, until one passes: every attempt is stored as its own draft (the
        warned ones stay in History) and the last one is shown, its status saying why.
        """
        started = time.perf_counter()  # end to end: from here (Generate) to the last committed block
        with user_errors():
            user = self._user(request)
            progress(None, desc="Reading the images")
            if files:
                study, _ = ingest_uploads(as_paths(files), store=self.store, owner=user,
                                          upload_cache_dir=self.settings.upload_cache_dir,
                                          study_id=study_id or None)
            elif study_id:
                study = self.store.get_study(study_id, user)
            else:
                raise ValueError("no image: upload one or more views (PNG, JPEG or DICOM) first")
            read_s = time.perf_counter() - started
            with self.services.gate.admitted(on_wait=waiting_progress(progress), shared=True):
                phases = {"read_s": round(read_s, 4), "gate_s": round(time.perf_counter() - started - read_s, 4)}
                uploaded_s = None if files else self.upload_seconds(study.id)
                if uploaded_s is not None:  # stored by an earlier upload: its seconds are the front of end to end
                    phases["upload_s"] = uploaded_s
                progress(None, desc="Loading the model and encoding the images")
                config = _sampler_config(max_new_tokens, temperature, threshold, seed)
                draft = yield from self._draft_stream(
                    study, user=user, indication=indication, language=language, model=model, sampler=sampler,
                    config=config, prefix=None, parent=None, started=started, phases=phases,
                )
                for name in self.drafting.fallback_for(model, sampler):
                    if draft is None or not draft.check_warnings:
                        break
                    note = (f"Drafted again by the {name}: the {draft.sampler} draft failed the report check "
                            f"({'; '.join(draft.check_warnings)}) and stays in History.")
                    progress(None, desc=f"Drafting again with the {name}")
                    draft = yield from self._draft_stream(
                        study, user=user, indication=indication, language=language, model=model, sampler=name,
                        config=config, prefix=None, parent=None, started=started, phases=phases, note=note,
                    )

    def redraft(
        self,
        draft_id: str,
        findings: str,
        impression: str,
        model: str = "",
        sampler: str = "echo",
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        threshold: float = 0.85,
        seed: int = 0,
        current: Current | None = None,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008  (Gradio injects progress through this default)
    ) -> Iterator[tuple[Any, ...]]:
        """Keep the radiologist's text up to their last edited section and let the model rewrite the rest.

        The edit is saved first (so the audit shows what was kept), then a new draft (child of
        ``draft_id``) streams like ``generate``. Where the installed model code cannot continue from a
        prefix, the user is told so and nothing changes. The wait for the device is as for ``generate``.
        """
        started = time.perf_counter()
        with user_errors():
            user = self._user(request)
            draft_id, _ = _bind(current, draft_id, None)
            source = self.store.get_draft(draft_id, user)
            if not self.drafting.supports_prefix(model):
                gr.Info("Re-draft from edit is not available with this model.")
                yield tuple(gr.skip() for _ in DRAFT_FIELDS)
                return
            if (findings, impression) not in (source.current, _editor_text(source)):  # the editor shows either
                self.store.save_edit(draft_id, user, findings=findings, impression=impression)
            prefix = redraft_prefix(findings, impression, draft_impression=source.impression, lang=source.language)
            study = self.store.get_study(source.study_id, user)
            config = _sampler_config(max_new_tokens, temperature, threshold, seed)
            with self.services.gate.admitted(on_wait=waiting_progress(progress), shared=True):
                progress(None, desc="Re-drafting after your edit")
                yield from self._draft_stream(
                    study, user=user, indication=source.settings.get("indication") or "",
                    language=source.language, model=model, sampler=sampler, config=config, prefix=prefix,
                    parent=source.id, started=started,
                )

    def _draft_stream(self, study: StudyInfo, *, user: str, indication: str, language: str, model: str,
                      sampler: str, config: Any, prefix: str | None, parent: str | None,
                      started: float | None = None, phases: dict[str, float] | None = None, note: str = "",
                      ) -> Generator[tuple[Any, ...], None, Any]:
        """Stream one :class:`DraftView` per committed block and save the draft with the last one; return the
        finished ``echo_model.drafting.Draft`` (None when the stream was closed before it finished).

        ``started``: ``time.perf_counter()`` when the request arrived; the timings then hold ``end_to_end_s``
        (to the latest block: reading images, waiting for the device and loading the model included).
        ``phases``: seconds spent before drafting (``read_s`` storing the uploads, ``gate_s`` waiting for
        admission), kept in the timings with the shared batch's figures (``BlockStep.batch``).
        ``note``: said before the status of every update (why this draft is being written).
        """
        label = self.drafting.check_model(model)
        input_warnings = [f"{img.label}: {w}" for img in study.images for w in img.warnings]
        for warning in input_warnings:
            gr.Warning(warning)
        images = load_study_images(study)
        kwargs = {"model": label, "sampler": sampler, "language": language, "config": config,
                  "indication": indication.strip() or None, "warnings": input_warnings}
        steps = (self.drafting.redraft_from(prefix, images, **kwargs) if prefix
                 else self.drafting.stream(images, **kwargs))
        shown: list[tuple[str, str | None]] = [(prefix + " ", "kept")] if prefix else []
        # (text, probability) of everything shown, for the sentence view; the kept prefix has no probability
        written: list[tuple[str, float | None]] = [(prefix + " ", None)] if prefix else []
        drafting = _study_current(study).with_draft("", version=0, state="drafting",
                                                     indication=indication.strip(), model=label)
        trace: list[dict[str, Any]] = []
        per_block_ms: list[float] = []
        first_block_s = 0.0
        finished = None
        for step in steps:
            written += [(p.text, p.confidence) for p in step.pieces]
            shown += _pieces_view(step.pieces)
            stored = [[p.text, round(p.confidence, 5)] for p in step.pieces]  # the trace keeps them for reopening
            if step.index >= 0:
                trace.append({**step.trace(), "pieces": stored})
                per_block_ms.append(round(step.block_ms, 2))
                first_block_s = first_block_s or step.seconds
            elif trace:  # the end of a character held back by the decoder belongs to the last block
                trace[-1]["pieces"] += stored
            timing = {
                "blocks": len(trace), "time_to_first_block_s": round(first_block_s, 4),
                "per_block_ms": per_block_ms, "elapsed_s": round(step.seconds, 4), "done": step.done,
                "sampler": sampler, "model": label, "revision": step.model_revision,
                **(phases or {}), **step.batch,
            }
            if started is not None:
                timing["end_to_end_s"] = round(time.perf_counter() - started, 4)
                if "upload_s" in timing:
                    timing["upload_to_last_block_s"] = round(timing["upload_s"] + timing["end_to_end_s"], 4)
            view = DraftView(
                report_view=shown + ([] if step.done else [(MASK_GLYPH * step.block_length, "masked")]),
                language=language, study_id=study.id,
                blocks=_block_rows(trace),
                warnings="\n".join(input_warnings), status=f"{note} Drafting…" if note else "Drafting…",
                current=drafting,
                evidence=evidence_html(sentence_evidence(written), pending=0 if step.done else step.block_length),
            )
            view.findings, view.impression = split_report(step.report)
            if step.draft is not None:
                saving = time.perf_counter()
                saved = self._save_draft(step.draft, study=study, user=user, label=label, trace=trace,
                                         timing=timing, parent=parent, seed=config.seed)
                view.draft_id, view.status = saved.id, _status_text(saved)
                if note:
                    view.status = f"{note} {view.status}"
                finished = step.draft
                # what storing the draft took, shown with this reply (the stored timings cannot hold it)
                view.timing = {**saved.timings, "store_s": round(time.perf_counter() - saving, 4)}
                # The plain running text while blocks stream; the region layout once the draft is finished.
                view.findings, view.impression = _editor_text(saved)
                view.current = _draft_current(saved, study)
            else:
                view.timing = timing
            view.summary = _summary(view.timing)
            yield view.outputs()
        return finished

    def _save_draft(self, draft: Any, *, study: StudyInfo, user: str, label: str, trace: list[dict[str, Any]],
                    timing: dict[str, Any], parent: str | None, seed: int | None) -> DraftInfo:
        result = draft.result
        findings, impression = split_report(draft.report) if draft.report.strip() else (draft.findings,
                                                                                        draft.impression)
        figures = result.figures.to_json()
        timings = {
            **timing,
            "done": True,
            **figures,
            # the names the draft summary and stored drafts have always used
            "time_to_first_block_s": figures["first_block_seconds"],
            "total_s": figures["seconds"],
            "revision": draft.model_revision,
            "model": label,
        }
        return self.store.add_draft(NewDraft(
            study_id=study.id, author=user, model=draft.model, model_revision=draft.model_revision,
            sampler=draft.sampler, language=draft.settings.get("lang", "en"), report=draft.report,
            findings=findings, impression=impression, seed=seed,
            settings={**draft.settings, "model_label": label}, trace=trace, timings=timings,
            warnings=list(draft.warnings), parent_id=parent,
        ))

    def open_draft(self, draft_id: str, study_id: str = "", request: gr.Request | None = None) -> tuple[Any, ...]:
        """Show a stored draft with its latest text; with no draft id, the study ``study_id`` without a draft
        (a worklist row with no draft yet). Outputs: DRAFT_FIELDS."""
        with user_errors():
            return self._open(study_id, draft_id, user=self._user(request))

    def _open(self, study_id: str | None, draft_id: str | None, *, user: str) -> tuple[Any, ...]:
        draft_id, study_id = (draft_id or "").strip(), (study_id or "").strip()
        if not draft_id and study_id:
            current = _study_current(self.store.get_study(study_id, user))
            return DraftView(study_id=current.study_id, current=current).outputs()
        draft = self.store.get_draft(draft_id, user)
        return self._draft_view(draft, self.store.get_study(draft.study_id, user)).outputs()

    def _draft_view(self, draft: DraftInfo, study: StudyInfo) -> DraftView:
        shown: list[tuple[str, str | None]] = []
        prefix = draft.settings.get("prefix")
        if prefix:
            shown.append((prefix + " ", "kept"))
        for block in draft.trace:
            shown.append((block["text"], None) if not block.get("confidences") else
                         (block["text"], confidence_band(min(block["confidences"]))))
        findings, impression = _editor_text(draft)
        view = DraftView(
            report_view=shown, findings=findings, impression=impression, language=draft.language,
            timing=draft.timings, study_id=draft.study_id, draft_id=draft.id, status=_status_text(draft),
            blocks=_block_rows(draft.trace),
            warnings="\n".join(draft.warnings), current=_draft_current(draft, study),
            evidence=evidence_html(sentence_evidence(_trace_pieces(draft))),
        )
        view.summary = _summary(draft.timings) if draft.timings.get("blocks") else ""
        return view

    # ------------------------------------------------------------------ correct and sign
    def save_edit(self, draft_id: str, findings: str, impression: str, reasons: list[str] | None = None,
                  comment: str = "", version: float | None = None, current: Current | None = None,
                  request: gr.Request | None = None) -> tuple[str, str]:
        """Save the text exactly as sent (a new version; the draft stays unsigned). Outputs: status, copy_text.

        ``version`` (optional): the number of saved versions the text is based on; a save based on another
        version than the stored one (e.g. from a second tab) is refused.
        """
        with user_errors():
            user = self._user(request)
            draft_id, expected = _bind(current, draft_id, version)
            edit = self.store.save_edit(draft_id, user, findings=findings, impression=impression,
                                        reasons=list(reasons or []), comment=comment, expected_version=expected)
            draft = self.store.get_draft(draft_id, user)
            return (f"Saved version {len(draft.versions)} at {edit.created_at:%H:%M:%S} UTC (not signed).",
                    format_report(findings, impression, lang=report_language(draft.language)))

    def refresh_current(self, current: Current | None = None, request: gr.Request | None = None) -> tuple[Any, ...]:
        """The session's draft as stored now (version, state). Outputs: CURRENT_FIELDS."""
        with user_errors():
            if not isinstance(current, Current) or not current.draft_id:
                return (None, banner_markdown(current), current or Current(), "")
            user = self._user(request)
            draft = self.store.get_draft(current.draft_id, user)
            now = _draft_current(draft, self.store.get_study(draft.study_id, user))
            now = Current(**{**now.__dict__, "indication": now.indication or current.indication})
            return now.version, banner_markdown(now), now, warnings_html(now.warnings)

    def confirm_sign(self, draft_id: str, findings: str, impression: str, version: float | None = None,
                     current: Current | None = None, request: gr.Request | None = None) -> tuple[Any, Any, Any]:
        """Show what *Sign* would sign (and the draft's warnings) before signing. Outputs: panel, text, sign-anyway."""
        with user_errors():
            user = self._user(request)
            draft_id, _ = _bind(current, draft_id, version)
            draft = self.store.get_draft(draft_id, user)
            if draft.signed_at is not None:
                raise SignedReportError(f"draft {draft_id!r} is already signed (by {draft.signed_by} at "
                                        f"{draft.signed_at:%Y-%m-%d %H:%M} UTC): add an addendum instead")
            if not (findings.strip() or impression.strip()):
                raise ValueError(f"cannot sign draft {draft_id!r}: findings and impression are both empty")
            text = (f"**You are signing draft `{draft_id[:8]}` of study `{draft.study_id[:8]}`** "
                    f"(version {len(draft.versions) + 1}); the report is then locked.\n\n"
                    f"**Findings:** {_lines(findings) or '(empty)'}\n\n**Impression:** {_lines(impression) or '(empty)'}")
            if draft.warnings:
                text += (f"\n\n**⚠ This draft has {len(draft.warnings)} warning"
                         f"{'' if len(draft.warnings) == 1 else 's'}:** " + "; ".join(draft.warnings)
                         + "\n\nTick *Sign anyway* to sign it as it is.")
            return gr.update(visible=True), text, gr.update(visible=bool(draft.warnings), value=False)

    def sign(self, draft_id: str, findings: str, impression: str, reasons: list[str] | None = None,
             comment: str = "", version: float | None = None, sign_anyway: bool = False,
             current: Current | None = None, request: gr.Request | None = None) -> tuple[Any, ...]:
        """Sign the text as sent; the report becomes read-only. Outputs: status, findings, impression, copy_text.

        A draft with warnings is signed only with ``sign_anyway``; ``version`` is checked as in ``save_edit``.
        """
        with user_errors():
            user = self._user(request)
            draft_id, expected = _bind(current, draft_id, version)
            before = self.store.get_draft(draft_id, user)
            if before.signed_at is None and before.warnings and not sign_anyway:
                raise ValueError(
                    f"draft {draft_id!r} has {len(before.warnings)} warning{'' if len(before.warnings) == 1 else 's'}"
                    f" ({'; '.join(before.warnings)}): check the text against the images and tick 'Sign anyway' "
                    "to sign it as it is")
            draft = self.store.sign(draft_id, user, findings=findings, impression=impression,
                                    reasons=list(reasons or []), comment=comment, expected_version=expected)
            return (_status_text(draft), findings, impression,
                    format_report(findings, impression, lang=report_language(draft.language)))

    def editor_lock(self, draft_id: str, request: gr.Request | None = None) -> tuple[Any, Any, Any]:
        """Findings and Impression editable unless the shown draft is signed, and "Re-draft with the teacher"
        shown only for a warned one-step draft (:func:`~app.service.offers_teacher_redraft`); chained after
        every action that puts a draft on screen."""
        signed = offer = False
        if (draft_id or "").strip():
            try:
                draft = self.store.get_draft(draft_id.strip(), self._user(request))
            except StoreError:
                draft = None
            if draft is not None:
                signed, offer = draft.signed_at is not None, offers_teacher_redraft(draft)
        return gr.update(interactive=not signed), gr.update(interactive=not signed), gr.update(visible=offer)

    def add_addendum(self, draft_id: str, text: str, current: Current | None = None,
                     request: gr.Request | None = None) -> tuple[str, str]:
        """Append an addendum to a signed report. Outputs: status, addendum box (cleared)."""
        with user_errors():
            user = self._user(request)
            draft_id, _ = _bind(current, draft_id, None)
            self.store.add_addendum(draft_id, user, text)
            return _status_text(self.store.get_draft(draft_id, user)), ""

    # ------------------------------------------------------------------ history, export, deletion
    def history(self, request: gr.Request | None = None) -> list[list[Any]]:
        """The signed-in user's studies and drafts, newest first. Output: history table."""
        with user_errors():
            return _history_rows(self.store.history(self._user(request)))

    def worklist(self, query: str = "", request: gr.Request | None = None) -> tuple[list[list[Any]], WorklistView]:
        """The signed-in user's studies as a worklist, newest first, filtered by ``query`` (report text,
        indication or id). Outputs: worklist table, worklist state."""
        with user_errors():
            query = (query or "").strip()
            entries = self.store.worklist(self._user(request), query=query, limit=WORKLIST_LIMIT)
            return worklist_rows(entries), WorklistView.of(entries, query=query)

    def pick_worklist_row(self, view: WorklistView | None, evt: gr.SelectData) -> tuple[str, str]:
        """Fill the study/draft id boxes from a clicked worklist row (its short ids looked up in ``view``)."""
        row = evt.row_value if getattr(evt, "row_value", None) else []
        found = None
        if isinstance(view, WorklistView) and len(row) >= 2:
            found = view.full_ids(str(row[-2]), str(row[-1] or ""))
        return found if found is not None else (gr.skip(), gr.skip())

    def next_unsigned(self, current: Current | None = None, view: WorklistView | None = None,
                      request: gr.Request | None = None) -> tuple[Any, ...]:
        """Open the next unsigned study of the worklist after the one on the Draft tab (order in
        :mod:`app.worklist`). Outputs: DRAFT_FIELDS."""
        return self._step(current, view, direction="next", request=request)

    def previous_study(self, current: Current | None = None, view: WorklistView | None = None,
                       request: gr.Request | None = None) -> tuple[Any, ...]:
        """Open the study before the one on the Draft tab in the worklist. Outputs: DRAFT_FIELDS."""
        return self._step(current, view, direction="previous", request=request)

    def _step(self, current: Current | None, view: WorklistView | None, *, direction: str,
              request: gr.Request | None) -> tuple[Any, ...]:
        with user_errors():
            user = self._user(request)
            query = view.query if isinstance(view, WorklistView) else ""
            here = current.study_id if isinstance(current, Current) else ""
            entries = self.store.worklist(user, query=query, limit=WORKLIST_LIMIT)
            target = neighbour(entries, here, direction=direction)
            return self._open(target.study_id, target.draft_id, user=user)

    def pick_history_row(self, table: Any, evt: gr.SelectData) -> tuple[str, str]:
        """Fill the study/draft id boxes from a clicked history row."""
        row = evt.row_value if getattr(evt, "row_value", None) else []
        if len(row) < len(HISTORY_HEADERS):
            return gr.skip(), gr.skip()
        return str(row[-2] or ""), str(row[-1] or "")

    def export_corrections(self, since: str | float | None = None, until: str | float | None = None,
                           request: gr.Request | None = None) -> tuple[str, str]:
        """Zip the user's signed corrections (records.jsonl + de-identified PNGs). Outputs: file, status."""
        with user_errors():
            self.export_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            prune_exports(self.export_root)
            out_dir = Path(tempfile.mkdtemp(prefix=EXPORT_PREFIX, dir=self.export_root))
            result = export_corrections(
                self.store, self._user(request), out_dir=out_dir, since=parse_day(since, name="from"),
                until=parse_day(until, name="to"), licence=self.settings.export_licence,
            )
            return str(result.zip_path), f"Exported {result.records} signed reports with {result.images} images."

    def delete_study(self, study_id: str, confirm: bool = False,
                     request: gr.Request | None = None) -> tuple[str, list[list[Any]]]:
        """Delete a study with its images, drafts and edits (the audit keeps a PHI-free event). Outputs: status, history."""
        with user_errors():
            study_id = (study_id or "").strip()
            if not study_id:
                raise ValueError("choose a study to delete (click a row of the history table)")
            if not confirm:
                raise ValueError(f"tick the confirmation box to delete study {study_id!r}; this cannot be undone")
            user = self._user(request)
            counts = self.store.delete_study(study_id, user)
            message = (f"Deleted study {study_id}: {counts['views']} views, {counts['drafts']} drafts, "
                       f"{counts['edits']} edits.")
            return message, _history_rows(self.store.history(user))

    def findings_list(self, findings: str = "", impression: str = "") -> str:
        """The observations the editor's text asserts (present / uncertain / absent), as HTML; follows edits."""
        with user_errors():
            return findings_html(asserted_findings(findings or "", impression or ""))

    def languages(self, model: str = "") -> Any:
        """Language choices of the chosen model (read from its config, without loading weights)."""
        with user_errors():
            info = self.drafting.model_info(model)
            return gr.update(choices=list(info.languages), value=info.languages[0])

    def model_notice(self, model: str = "") -> str:
        """The chosen model's limitation beside the draft (the embedded family's; empty for a real checkpoint)."""
        with user_errors():
            return limitation_html(self.drafting.limitation(model))

    def audit(self, study_id: str = "", request: gr.Request | None = None) -> list[list[Any]]:
        """The audit events of one of the user's studies (or of all the user's actions)."""
        with user_errors():
            user = self._user(request)
            if study_id.strip():
                self.store.get_study(study_id.strip(), user)
                events = self.store.audit_trail(study_id=study_id.strip())
            else:
                events = [e for e in self.store.audit_trail() if e.actor == user]
            return [[f"{e.at:%Y-%m-%d %H:%M:%S}", e.actor, e.action, e.study_id or "", e.draft_id or "", str(e.detail)]
                    for e in events]


def _view_choices(study: StudyInfo) -> list[tuple[str, int]]:
    return [(f"{img.label} ({img.view})", img.position) for img in study.images]


def _position(view: Any) -> int | None:
    """A view menu value (a position; Gradio may send it as a float or a string) as an int, None if unset."""
    if view is None or view == "":
        return None
    try:
        return int(float(view))
    except (TypeError, ValueError):
        raise ValueError(f"not a view position: {view!r}") from None


def waiting_progress(progress: gr.Progress) -> Callable[[int], None]:
    """Show a draft's place in the drafting line as its progress text while it waits for a slot."""
    def show(ahead: int) -> None:
        progress(0.0, desc=f"Waiting for the model: {ahead} draft{'' if ahead == 1 else 's'} ahead of yours")

    return show


def as_paths(files: Any) -> list[str]:
    """``gr.File`` values (a path, a list of paths, or file objects with ``.name``) -> paths."""
    if files is None:
        return []
    items = files if isinstance(files, (list, tuple)) else [files]
    return [str(getattr(f, "name", f) if not isinstance(f, dict) else f.get("path")) for f in items]


def _sampler_config(max_new_tokens: float, temperature: float, threshold: float, seed: float | None) -> Any:
    """The sampler settings from UI values (Gradio numbers may arrive as floats)."""
    from echo_model.sampling import SamplerConfig

    return SamplerConfig(
        max_new_tokens=int(max_new_tokens), temperature=float(temperature), threshold=float(threshold),
        seed=None if seed is None else int(seed),
    )

