"""The History & export tab: the user's studies and drafts, opening one on the Draft tab, export, deletion, audit.

Opening a draft replaces the Draft tab's session state (:class:`~app.current.Current`) with it, so the editor,
overlays and progress are those of the opened study.
"""

from __future__ import annotations

import gradio as gr

from .draft_ui import PRIVATE, DraftTab
from .handlers import HISTORY_HEADERS, Handlers

__all__ = ["build_history_tab"]


def build_history_tab(h: Handlers, draft: DraftTab, *, demo: gr.Blocks, tabs: gr.Tabs) -> gr.Dataframe:
    """Create the "History & export" tab inside ``tabs`` and wire it to the Draft tab ``draft``; returns the table."""
    with gr.Tab("History & export", id="history") as history_tab:
        gr.Markdown("Your studies and drafts, newest first. Click a row to choose it.")
        refresh = gr.Button("Refresh", size="sm", elem_id="refresh-btn")
        history = gr.Dataframe(headers=HISTORY_HEADERS, label="History", interactive=False, elem_id="history")
        with gr.Row():
            chosen_study = gr.Textbox("", label="Study id", elem_id="history-study")
            chosen_draft = gr.Textbox("", label="Draft id", elem_id="history-draft")
            open_draft = gr.Button("Open draft", elem_id="open-btn")
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
    history_tab.select(h.history, None, [history], **PRIVATE)
    demo.load(h.history, None, [history], **PRIVATE)
    history.select(h.pick_history_row, [history], [chosen_study, chosen_draft], **PRIVATE)
    # The opened draft replaces the Draft tab's state (ids, version, editor, overlays, progress) in one update.
    open_draft.click(h.open_draft, [chosen_draft], draft.draft_outputs, api_name="open_draft").success(
        **draft["clear_edit"]).then(**draft.lock).then(
        h.show_study, [draft["study_id"]], draft.viewer_outputs, **PRIVATE).then(
        lambda: gr.Tabs(selected="draft"), None, [tabs], **PRIVATE)
    export.click(h.export_corrections, [since, until], [export_file, export_status], api_name="export_corrections")
    delete.click(h.delete_study, [chosen_study, confirm], [delete_status, history], api_name="delete_study")
    show_audit.click(h.audit, [chosen_study], [audit], api_name="audit")
    return history
