"""The History & export tab: the worklist of the user's studies, opening one on the Draft tab, export, deletion, audit.

The worklist (:mod:`app.worklist`) shows one row per study: a thumbnail of its first view, the impression's
first line, the indication, the state and the time, short ids last; a search box filters it (in SQL). *Next
unsigned* and *Previous* (:func:`build_worklist_nav`, above the tabs, so they work from any tab and the
keyboard shortcuts can click them) open the next unsigned / the previous study of the worklist on the Draft tab.
Opening a draft replaces the Draft tab's session state (:class:`~app.current.Current`) with it, so the editor,
overlays and progress are those of the opened study.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from .draft_ui import PRIVATE, DraftTab
from .handlers import HISTORY_HEADERS, Handlers
from .worklist import WORKLIST_DATATYPES, WORKLIST_HEADERS, WorklistView

__all__ = ["WorklistNav", "build_history_tab", "build_worklist_nav"]


@dataclass(frozen=True)
class WorklistNav:
    """The *Previous* / *Next unsigned* buttons (built above the tabs, wired by :func:`build_history_tab`)."""

    previous: gr.Button
    next: gr.Button


def build_worklist_nav() -> WorklistNav:
    """The worklist navigation row; call it inside the Blocks, before the tabs."""
    with gr.Row(elem_id="worklist-nav"):
        previous = gr.Button("◀ Previous study", size="sm", elem_id="prev-study-btn", scale=0, min_width=150)
        following = gr.Button("Next unsigned ▶", size="sm", elem_id="next-study-btn", scale=0, min_width=150)
    return WorklistNav(previous=previous, next=following)


def build_history_tab(h: Handlers, draft: DraftTab, *, demo: gr.Blocks, tabs: gr.Tabs,
                      nav: WorklistNav | None = None) -> gr.Dataframe:
    """Create the "History & export" tab inside ``tabs`` and wire it (and ``nav``) to the Draft tab ``draft``;
    returns the worklist table."""
    with gr.Tab("History & export", id="history") as history_tab:
        gr.Markdown("Your studies, newest first, one row each (its signed draft, else its latest). Click a row to "
                    "choose it, then *Open*; *Next unsigned* and *Previous* (above the tabs) step through this list.")
        view = gr.State(WorklistView())
        with gr.Row():
            search = gr.Textbox("", label="Search", placeholder="report text, indication or id; Enter to search",
                                elem_id="worklist-search", scale=4)
            refresh = gr.Button("Refresh", size="sm", elem_id="refresh-btn", scale=0, min_width=100)
        worklist = gr.Dataframe(headers=WORKLIST_HEADERS, datatype=WORKLIST_DATATYPES, label="Worklist",
                                interactive=False, wrap=True, elem_id="worklist",
                                column_widths=["112px", "32%", "13%", "9%", "13%", "5%", "8%", "8%"])
        with gr.Row():
            chosen_study = gr.Textbox("", label="Study id", elem_id="history-study")
            chosen_draft = gr.Textbox("", label="Draft id", elem_id="history-draft")
            open_draft = gr.Button("Open", elem_id="open-btn")
        with gr.Accordion("All drafts (re-drafts included, full ids)", open=False):
            history = gr.Dataframe(headers=HISTORY_HEADERS, label="History", interactive=False, elem_id="history")
        with gr.Accordion("Export corrections", open=True):
            gr.Markdown("Signed reports as an `echo.study/1` data set: `records.jsonl` + de-identified PNGs, "
                        "zipped, one record per signed report. Days are UTC and inclusive; leave empty for no limit.")
            with gr.Row():
                since = gr.DateTime(include_time=False, type="string", label="From", elem_id="since")
                until = gr.DateTime(include_time=False, type="string", label="To", elem_id="until")
                export = gr.Button("Export", elem_id="export-btn")
            export_file = gr.File(label="Data set (zip)", interactive=False, elem_id="export-file")
            export_status = gr.Markdown(label="Export status", elem_id="export-status")
        with gr.Accordion("Delete a study", open=False):
            confirm = gr.Checkbox(label="Delete the chosen study with its images, drafts and edits "
                                        "(the audit keeps a record of the deletion, without content)")
            delete = gr.Button("Delete study", variant="stop", elem_id="delete-btn")
            delete_status = gr.Markdown(label="Deletion status", elem_id="delete-status")
        with gr.Accordion("Audit trail", open=False):
            show_audit = gr.Button("Show audit of the chosen study (or of all my actions)", size="sm")
            audit = gr.Dataframe(headers=["time (UTC)", "who", "action", "study", "draft", "detail"],
                                 label="Audit trail", interactive=False)

    refresh.click(h.history, None, [history], api_name="history")
    listed = {"fn": h.worklist, "inputs": [search], "outputs": [worklist, view]}
    refresh.click(**listed, api_name="worklist")
    search.submit(**listed, **PRIVATE)
    history_tab.select(h.history, None, [history], **PRIVATE)
    history_tab.select(**listed, **PRIVATE)
    demo.load(h.history, None, [history], **PRIVATE)
    demo.load(**listed, **PRIVATE)
    history.select(h.pick_history_row, [history], [chosen_study, chosen_draft], **PRIVATE)
    worklist.select(h.pick_worklist_row, [view], [chosen_study, chosen_draft], **PRIVATE)

    select_draft_tab = {"fn": lambda: gr.Tabs(selected="draft"), "inputs": None, "outputs": [tabs], **PRIVATE}

    def shown_on_draft_tab(event: Any) -> None:
        """Chain after an event that put a draft (or a study) in the Draft tab's state: the rest of the tab
        follows (edit boxes, lock, viewer) and the Draft tab is selected."""
        event.success(**draft["clear_edit"]).then(**draft.lock).then(
            h.show_study, [draft["study_id"]], draft.viewer_outputs, **PRIVATE).then(**select_draft_tab)

    # The opened draft replaces the Draft tab's state (ids, version, editor, overlays, progress) in one update.
    shown_on_draft_tab(open_draft.click(h.open_draft, [chosen_draft, chosen_study], draft.draft_outputs,
                                        api_name="open_draft"))
    if nav is not None:
        stepping = [draft.current, view]
        shown_on_draft_tab(nav.next.click(h.next_unsigned, stepping, draft.draft_outputs, **PRIVATE))
        shown_on_draft_tab(nav.previous.click(h.previous_study, stepping, draft.draft_outputs, **PRIVATE))
    export.click(h.export_corrections, [since, until], [export_file, export_status], api_name="export_corrections")
    delete.click(h.delete_study, [chosen_study, confirm], [delete_status, history],
                 api_name="delete_study").success(**listed, **PRIVATE)
    show_audit.click(h.audit, [chosen_study], [audit], api_name="audit")
    return worklist
