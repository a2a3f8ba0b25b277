"""The ECHO web app: layout and event wiring (``build_demo``) and the ``echo-app`` console script (``main``).

Usage::

    echo-app [--host HOST] [--port PORT]
    echo-app db upgrade|current       the database schema (see app.db_cli)

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

from echo_model.loading import EMBEDDED_LIMITATION, REAL_CHECKPOINT_HINT

from .auth import AuthError, make_checker, parse_credentials
from .draft_ui import SAMPLER_CHOICES, build_draft_tab
from .explain_ui import build_explain_tab
from .handlers import Handlers
from .health import health_routes
from .history_ui import build_history_tab, build_worklist_nav
from .race_ui import build_race_tab
from .schema import SchemaError
from .service import ModelInfo, Services, app_version
from .settings import EMBEDDED, AppSettings, SettingsError

__all__ = ["NOTICE", "SAMPLER_CHOICES", "build_demo", "launch_options", "main", "queue_every_event"]

log = logging.getLogger("echo.app")

STATIC_DIR = Path(__file__).resolve().parent / "static"
NOTICE = (
    "<strong>Research prototype: NOT FOR CLINICAL USE.</strong> Drafts are written by a research model and may "
    "be wrong; a radiologist must check every sentence against the images. Upload de-identified images only."
)
# Worker threads kept for short events (saves, uploads, history) while every drafting slot and place in
# line is taken (each waiting draft holds one).
INTERACTIVE_THREADS = 24
# Upload cache purge: every 30 min, delete files older than 1 h (uploads are also deleted at once).
DELETE_CACHE = (1800, 3600)


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
{which}
{models}

### Data and licences

* Code: Apache-2.0.
* Embedded checkpoints: trained on the IU X-ray report collection (CC BY-NC-ND 4.0) and openly licensed images;
  they inherit the non-commercial terms (see their model card).
* Official ECHO checkpoints carry their authors' licence; the data sets used to train them carry theirs.
* Exported corrections are labelled with the licence `{licence}` (ECHO_EXPORT_LICENCE).

### Privacy

Uploads are converted to de-identified PNGs on arrival and the uploaded files deleted. Reports, edits and the audit
trail are stored in this server's data directory. Usage analytics, run history and the monitoring endpoint are off.
"""
# True of the family whatever its current training run: the run, its steps and scores are in the model card.
_EMBEDDED_NOTE = (
    "**The drafts here come from the embedded demonstration checkpoints**, not from the ECHO models of the paper; "
    f"they show how the app and block-by-block drafting work. {EMBEDDED_LIMITATION} The family is trained "
    "on normalized reports (one statement per anatomical region, the form the Draft tab lays out line by line); "
    "its one-step student often leaves the impression unfinished, and the report check warns when it does; "
    "the model card below says which training run these weights come from and how they score. "
    f"{REAL_CHECKPOINT_HINT} Several checkpoints, comma-separated, make the Model menu.\n"
)
_REAL_NOTE = "Drafts come from the checkpoints configured with `ECHO_MODEL` (listed below).\n"
_NO_CARD = {
    EMBEDDED: "The embedded demonstration checkpoint has no model card next to its weights.",
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
    which = _EMBEDDED_NOTE if EMBEDDED in settings.models else _REAL_NOTE
    return _ABOUT.format(version=app_version(), which=which, models="".join(models), licence=settings.export_licence)


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
        nav = build_worklist_nav()
        with gr.Tabs(elem_id="tabs") as tabs:
            draft = build_draft_tab(h, settings, languages=languages)
            build_explain_tab(services, draft_id=draft["draft_id"])
            build_race_tab(services, draft_study_id=draft["study_id"])
            build_history_tab(h, draft, demo=demo, tabs=tabs, nav=nav)
            with gr.Tab("About", id="about"):
                gr.Markdown(about_markdown(settings, infos), elem_id="about")
    queue_every_event(demo)
    # Unbounded: gradio_client sends saves through the queue too, and Gradio's max_size would refuse them when
    # drafts fill it. Drafts are bounded by Services.gate instead; other events are short and run at once.
    demo.queue(max_size=None, default_concurrency_limit=None)
    return demo


def queue_every_event(demo: gr.Blocks) -> None:
    """Send every event through Gradio's queue, with no concurrency limit of its own.

    Why: in the browser, Gradio 6 shows an error of an unqueued event (``queue=False``) as a bare "Error"
    badge without its message; queued events show the ``gr.Error`` message in words, as API clients get it.
    Nothing waits behind a draft: the queue is unbounded and unlimited here (drafts wait in Services.gate).
    """
    for fn in demo.fns.values():
        if fn.fn is not None:
            fn.queue = True
            if fn.concurrency_id != "gpu":
                fn.concurrency_limit = None


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
        "max_threads": settings.generation_concurrency * settings.max_batch + settings.queue_size + INTERACTIVE_THREADS,
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
    from .db_cli import add_db_parser, run_db_command

    add_db_parser(parser.add_subparsers(dest="command", title="commands"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "db":
        return run_db_command(args.action)
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
    log.info("database %s", settings.database_url_redacted)
    try:
        services = Services.create(settings)
        demo = build_demo(settings, services=services)
    except SchemaError as err:  # a replica on a database at another schema revision: no traceback, no start
        print(f"echo-app: error: {err}", file=sys.stderr)
        return 2
    options["app_kwargs"] = {"routes": health_routes(services)}  # GET /healthz for a load balancer, no login
    from .batching import tune_for_drafting  # torch threads and the GIL switch interval of the served process

    tune_for_drafting(settings.device, settings.cpu_threads)
    demo.launch(**options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
