"""The ECHO web app: layout and event wiring (``build_demo``) and the ``echo-app`` console script (``main``).

Usage::

    echo-app [--host HOST] [--port PORT]

Configuration comes from the environment (see :mod:`app.settings` and docs/app.md): ``ECHO_MODEL``,
``ECHO_DATA_DIR``, ``ECHO_AUTH``, ``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT`` ...

Privacy defaults (each one is a Gradio default that would otherwise leak clinical data): analytics off,
no browser run history, no ``/monitoring`` endpoint, no share link, no web fonts fetched from Google, the
upload cache purged (``delete_cache``) and every upload deleted once de-identified, X-rays served as PNG.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import gradio as gr

from echo_model.data.records import EDIT_REASONS

from .auth import AuthError, make_checker, parse_credentials
from .handlers import (
    BLOCK_HEADERS,
    DEFAULT_WINDOW,
    DRAFT_FIELDS,
    HISTORY_HEADERS,
    REPORT_COLOURS,
    VIEWER_FIELDS,
    Handlers,
)
from .explain_ui import build_explain_tab
from .race_ui import build_race_tab
from .service import ModelInfo, Services, app_version
from .settings import EMBEDDED, AppSettings, SettingsError

__all__ = ["NOTICE", "build_demo", "launch_options", "main"]

log = logging.getLogger("echo.app")

STATIC_DIR = Path(__file__).resolve().parent / "static"
NOTICE = (
    "<strong>Research prototype: NOT FOR CLINICAL USE.</strong> Drafts are written by a research model and may "
    "be wrong; a radiologist must check every sentence against the images. Upload de-identified images only."
)
SAMPLER_CHOICES: list[tuple[str, str]] = [
    ("ECHO: one step per block (student)", "echo"),
    ("Teacher: multi-step block diffusion", "teacher"),
    ("Vanilla: one step on the teacher", "vanilla"),
    ("AR: token by token (baseline)", "ar"),
]
# Worker threads kept for short events (saves, uploads, history) while every drafting slot and place in
# line is taken (each waiting draft holds one).
INTERACTIVE_THREADS = 24
# Upload cache purge: every 30 min, delete files older than 1 h (uploads are also deleted at once).
DELETE_CACHE = (1800, 3600)
# Client-side only: the copy box follows the editor without a server round trip per keystroke.
_COPY_JS = """(f, i, lang) => lang === 'zh' ? `所见：${f.trim()} 结论：${i.trim()}`
                                            : `Findings: ${f.trim()} Impression: ${i.trim()}`"""


def _theme() -> gr.themes.Base:
    """Soft theme with system fonts: the default theme fetches Google Fonts from every clinician's browser."""
    system = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"]
    mono = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
    return gr.themes.Soft(font=system, font_mono=mono)


_ABOUT = """## About ECHO

App version **{version}**. ECHO drafts chest X-ray reports with one-step block diffusion (arXiv 2604.09450): the
report is written in blocks of *b* tokens, each block in one forward pass.

**Not for clinical use.** This is research software. It has not been validated for diagnosis and is not a medical
device. Do not upload identifiable patient data: DICOM headers are reduced to an allow-list and images stored as
pixel-only PNGs, but text burned into the pixels is not removed.

### Models
{models}

### Data and licences

* Code: Apache-2.0.
* Embedded checkpoints: their tokenizer (and, once trained, their weights) derive from the IU X-ray report collection
  (CC BY-NC-ND 4.0) and inherit its non-commercial terms.
* Official ECHO checkpoints carry their authors' licence; the data sets used to train them carry theirs.
* Exported corrections are labelled with the licence `{licence}` (ECHO_EXPORT_LICENCE).

### Privacy

Uploads are converted to de-identified PNGs on arrival and the uploaded files deleted. Reports, edits and the audit
trail are stored in this server's data directory. Usage analytics, run history and the monitoring endpoint are off.
"""
_NO_CARD = {
    EMBEDDED: "The embedded checkpoints are 4.7M-parameter demonstration models with **random weights** until the "
              "training stage lands: their reports are noise.",
}


def about_markdown(settings: AppSettings, infos: list[ModelInfo]) -> str:
    """The About tab: version, models (with their cards), data, licences and the notice."""
    models = []
    for info in infos:
        block = f", block length {info.block_length}" if info.block_length else ""
        models.append(f"\n**{info.label}**: revision `{info.revision}`, languages {', '.join(info.languages)}{block}.\n\n")
        if info.card:
            models.append(f"<details><summary>Model card</summary>\n\n{info.card.strip()}\n\n</details>\n")
        else:
            models.append(_NO_CARD.get(info.label, "No model card found next to the weights (shown once the "
                                                   "model is downloaded).") + "\n")
    return _ABOUT.format(version=app_version(), models="".join(models), licence=settings.export_licence)


def build_demo(settings: AppSettings | None = None, *, services: Services | None = None) -> gr.Blocks:
    """The app's Blocks (queue configured, not launched).

    Args:
        settings: deployment settings; default: read from the environment.
        services: pre-built services (tests); default: built from ``settings`` (opens the database, loads
            no model: models load on the first generation).
    """
    settings = settings or AppSettings.from_env()
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    services = services or Services.create(settings)
    h = Handlers(services)
    persistence = settings.persistence_warning()
    if persistence:
        log.warning(persistence)
    infos = [services.drafting.model_info(m) for m in settings.models]
    languages = list(infos[0].languages)

    with gr.Blocks(title="ECHO chest X-ray drafts (research use only)", analytics_enabled=False,
                   delete_cache=DELETE_CACHE, fill_width=True) as demo:
        gr.HTML(NOTICE, elem_id="clinical-notice")
        if persistence:
            gr.HTML(f"<strong>Warning:</strong> {persistence}", elem_id="persistence-warning")
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Draft", id="draft"):  # noqa: SIM117  (nesting mirrors the page layout)
                with gr.Row():
                    with gr.Column(scale=2):
                        # No file_types filter: DICOM files often have no extension, and the loader reads the
                        # format from the content (anything else is refused with a message naming the file).
                        files = gr.File(label="Views of one study (PNG, JPEG or DICOM)", file_count="multiple",
                                        type="filepath", elem_id="upload")
                        view_select = gr.Dropdown(label="View", choices=[], interactive=True, elem_id="view-select")
                        viewer = gr.Image(label="De-identified view", type="pil", image_mode="L", format="png",
                                          interactive=False, buttons=["fullscreen"], height=420, elem_id="viewer")
                        view_info = gr.Markdown(label="View details", elem_id="view-info")
                        with gr.Row():
                            center = gr.Slider(0, 255, value=DEFAULT_WINDOW[0], step=1, label="Level (centre)")
                            width = gr.Slider(1, 512, value=DEFAULT_WINDOW[1], step=1, label="Window (width)")
                        with gr.Row():
                            reset_window = gr.Button("Reset window", size="sm")
                            new_study = gr.Button("New study", size="sm")
                    with gr.Column(scale=3):
                        indication = gr.Textbox("", label="Indication (optional)", lines=1,
                                                placeholder="e.g. cough and fever", elem_id="indication")
                        with gr.Row():
                            language = gr.Dropdown(label="Language", choices=languages, value=languages[0],
                                                   allow_custom_value=True, elem_id="language")
                            model = gr.Dropdown(label="Model", choices=list(settings.models),
                                                value=settings.default_model, elem_id="model")
                            sampler = gr.Dropdown(label="Sampler", choices=SAMPLER_CHOICES, value="echo",
                                                  elem_id="sampler")
                        with gr.Accordion("Decoding settings", open=False):
                            max_new_tokens = gr.Slider(8, 1024, value=settings.max_new_tokens, step=8,
                                                       label="Max new tokens")
                            temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                            threshold = gr.Slider(0.0, 1.0, value=0.85, step=0.01,
                                                  label="Commit threshold τ (teacher sampler)")
                            seed = gr.Number(value=0, precision=0, label="Seed (used when temperature > 0)")
                        with gr.Row():
                            generate = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                            stop = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                        report_view = gr.HighlightedText(
                            label="Draft as written, block by block (colour = model confidence: high ≥ 0.9, "
                                  "medium ≥ 0.6, low; grey ▒ = positions not yet written)",
                            color_map=REPORT_COLOURS, show_legend=True, show_inline_category=False,
                            combine_adjacent=False, elem_id="report-view")
                        summary = gr.Markdown(label="Summary", elem_id="summary")
                        warnings = gr.Textbox(label="Input warnings", lines=2, interactive=False, elem_id="warnings")
                        findings = gr.Textbox("", label="Findings", lines=6, interactive=True, elem_id="findings")
                        impression = gr.Textbox("", label="Impression", lines=3, interactive=True, elem_id="impression")
                        reasons = gr.CheckboxGroup(list(EDIT_REASONS), value=[], label="Edit reasons", elem_id="reasons")
                        comment = gr.Textbox("", label="Comment", lines=1, elem_id="comment")
                        with gr.Row():
                            save = gr.Button("Save edit", elem_id="save-btn")
                            sign = gr.Button("Sign", variant="primary", elem_id="sign-btn")
                            redraft = gr.Button("Re-draft after my edit", elem_id="redraft-btn")
                        status = gr.Markdown(label="Report status", elem_id="status")
                        copy_text = gr.Textbox(label="Report text (copy)", lines=3, interactive=False,
                                               buttons=["copy"], elem_id="copy-text")
                        with gr.Accordion("Addendum (signed reports only)", open=False):
                            addendum = gr.Textbox("", label="Addendum", lines=2, elem_id="addendum")
                            add_addendum = gr.Button("Add addendum", elem_id="addendum-btn")
                        with gr.Accordion("Record: ids, timings and per-block trace", open=False):
                            with gr.Row():
                                study_id = gr.Textbox("", label="Study id", elem_id="study-id")
                                draft_id = gr.Textbox("", label="Draft id", elem_id="draft-id")
                            timing = gr.JSON(label="Timings and settings", elem_id="timing")
                            blocks = gr.Dataframe(headers=BLOCK_HEADERS, label="Blocks", interactive=False,
                                                  elem_id="blocks")
            build_explain_tab(services, draft_id=draft_id)
            build_race_tab(services, draft_study_id=study_id)
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
                                "zipped. Days are UTC and inclusive; leave empty for no limit.")
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
            with gr.Tab("About", id="about"):
                gr.Markdown(about_markdown(settings, infos), elem_id="about")

        comps: dict[str, Any] = {
            "report_view": report_view, "findings": findings, "impression": impression, "copy_text": copy_text,
            "summary": summary, "timing": timing, "blocks": blocks, "warnings": warnings, "study_id": study_id,
            "draft_id": draft_id, "status": status, "view_select": view_select, "viewer": viewer,
            "view_info": view_info, "center": center, "width": width,
        }
        draft_outputs = [comps[name] for name in DRAFT_FIELDS]
        viewer_outputs = [comps[name] for name in VIEWER_FIELDS]
        decoding = [model, sampler, max_new_tokens, temperature, threshold, seed]
        # Drafts wait for the device in Services.gate (ours, bounded), not in Gradio's queue (app/admission).
        gpu: dict[str, Any] = {"concurrency_id": "gpu", "concurrency_limit": None}
        direct: dict[str, Any] = {"queue": False}  # saves, exports and viewer never wait behind generations
        private: dict[str, Any] = {"api_visibility": "private"}

        # Upload and viewer.
        files.upload(h.upload, [files, study_id], [*viewer_outputs, files], api_name="upload_views", **direct)
        new_study.click(h.new_study, None, viewer_outputs, **direct, **private)
        window_inputs = [study_id, view_select, center, width]
        view_select.input(h.render_view, window_inputs, [viewer, view_info], **direct, **private)
        center.release(h.render_view, window_inputs, [viewer, view_info], **direct, **private)
        width.release(h.render_view, window_inputs, [viewer, view_info], **direct, **private)
        reset_window.click(lambda: DEFAULT_WINDOW, None, [center, width], **direct, **private).then(
            h.render_view, window_inputs, [viewer, view_info], **direct, **private)
        model.change(h.languages, [model], [language], **direct, **private)

        # Drafting (queued, one slot on the device).
        generating = generate.click(
            h.generate, [files, indication, language, *decoding, study_id], draft_outputs, api_name="generate",
            show_progress="minimal", trigger_mode="once", **gpu)
        redrafting = redraft.click(
            h.redraft, [draft_id, findings, impression, *decoding], draft_outputs, api_name="redraft_from_edit",
            show_progress="minimal", trigger_mode="once", **gpu)
        stop.click(None, None, None, cancels=[generating, redrafting], **direct, **private)
        lock = {"fn": h.editor_lock, "inputs": [draft_id], "outputs": [findings, impression], **direct, **private}
        generating.then(**lock)
        redrafting.then(**lock)

        # Correct and sign.
        edit_inputs = [draft_id, findings, impression, reasons, comment]
        save.click(h.save_edit, edit_inputs, [status, copy_text], api_name="save_edit", **direct)
        sign.click(h.sign, edit_inputs, [status, findings, impression, copy_text], api_name="sign", **direct).then(
            **lock)
        add_addendum.click(h.add_addendum, [draft_id, addendum], [status, addendum], api_name="add_addendum",
                           **direct)
        for box in (findings, impression):
            box.input(None, [findings, impression, language], [copy_text], js=_COPY_JS, **direct, **private)

        # History, export, deletion, audit.
        refresh.click(h.history, None, [history], api_name="history", **direct)
        history_tab.select(h.history, None, [history], **direct, **private)
        demo.load(h.history, None, [history], **direct, **private)
        history.select(h.pick_history_row, [history], [chosen_study, chosen_draft], **direct, **private)
        open_draft.click(h.open_draft, [chosen_draft], draft_outputs, api_name="open_draft", **direct).then(
            **lock).then(h.show_study, [study_id], viewer_outputs, **direct, **private).then(
            lambda: gr.Tabs(selected="draft"), None, [tabs], **direct, **private)
        export.click(h.export_corrections, [since, until], [export_file, export_status],
                     api_name="export_corrections", **direct)
        delete.click(h.delete_study, [chosen_study, confirm], [delete_status, history], api_name="delete_study",
                     **direct)
        show_audit.click(h.audit, [chosen_study], [audit], api_name="audit", **direct)

    # Unbounded: gradio_client sends saves through the queue too, and Gradio's max_size would refuse them when
    # drafts fill it. Drafts are bounded by Services.gate instead; other events are short and run at once.
    demo.queue(max_size=None, default_concurrency_limit=None)
    return demo


def launch_options(settings: AppSettings) -> dict[str, Any]:
    """Keyword arguments of ``demo.launch`` (privacy defaults, auth, theme, CSS)."""
    options: dict[str, Any] = {
        "server_name": settings.server_name,
        "server_port": settings.server_port,
        "share": False,
        "run_history": False,
        "enable_monitoring": False,
        "mcp_server": False,
        "pwa": False,
        "ssr_mode": False,
        "strict_cors": True,
        "max_file_size": settings.max_file_size,
        "footer_links": ["api", "settings"],
        # Drafts waiting in the gate hold a worker thread each; keep threads for saves, uploads and history.
        "max_threads": settings.generation_concurrency + settings.queue_size + INTERACTIVE_THREADS,
        "theme": _theme(),
        "css_paths": [STATIC_DIR / "app.css"],
    }
    if settings.auth:
        options["auth"] = make_checker(parse_credentials(settings.auth))
        options["auth_message"] = "ECHO research prototype: sign in. Not for clinical use."
    return options


def main(argv: list[str] | None = None) -> int:
    """Console script ``echo-app``: read the environment, build the app and serve it until interrupted."""
    parser = argparse.ArgumentParser(
        prog="echo-app", description="ECHO chest X-ray report drafting web app (research use only).",
        epilog="Configuration: ECHO_MODEL, ECHO_DATA_DIR, ECHO_AUTH, GRADIO_SERVER_NAME, GRADIO_SERVER_PORT "
               "(see docs/app.md).")
    parser.add_argument("--host", help="interface to listen on (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: GRADIO_SERVER_PORT or the first free from 7860)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = AppSettings.from_env()
        options = launch_options(settings)
    except (SettingsError, AuthError) as err:
        print(f"echo-app: error: {err}", file=sys.stderr)
        return 2
    if args.host:
        options["server_name"] = args.host
    if args.port:
        options["server_port"] = args.port
    if not settings.auth and (options.get("server_name") or "127.0.0.1") not in ("127.0.0.1", "localhost"):
        log.warning("listening on %s without ECHO_AUTH: anyone who can reach this port can read the reports",
                    options["server_name"])
    demo = build_demo(settings)
    demo.launch(**options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
