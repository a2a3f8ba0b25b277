"""The Race tab: AR and ECHO (optionally the teacher) drafting the same study live, side by side.

Why a separate module from :mod:`app.handlers`: the race is a demonstration of speed, not part of the
radiologist's draft-correct-sign workflow; it stores no draft, only the uploaded study (de-identified, as on
the Draft tab). The work happens in :mod:`app.race`; here are the callbacks and the layout.

Endpoints: ``/race_stream`` (one update per committed block per arm, the Race button) and ``/race`` (the same
race run to its end, returning the record as JSON). A race holds every drafting slot of ``Services.gate``
(see :mod:`app.admission`) while it runs, so no draft ever runs beside it, whatever
``ECHO_GENERATION_CONCURRENCY`` is.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
from PIL import Image

from .admission import GenerationGate
from .handlers import as_paths, user_errors
from .race import ARM_TITLES, ARMS, LENGTHS, MODES, ArmProgress, RaceService, RaceUpdate, count_text
from .service import Services, ingest_uploads, load_study_images

__all__ = ["FIGURE_HEADERS", "RACE_FIELDS", "RaceHandlers", "build_race_tab", "figure_rows", "length_choices",
           "speed_plot"]

#: Output order of the streaming race callback.
RACE_FIELDS: tuple[str, ...] = (
    "ar_text", "echo_text", "teacher_text", "ar_status", "echo_status", "teacher_status", "how", "figures", "plot",
    "record", "study_id",
)
FIGURE_HEADERS = ["arm", "model", "revision", "parameters", "seconds", "first block (s)", "forward passes",
                  "model calls", "tokens", "tokens / forward", "tokens / s"]
MODE_CHOICES: list[tuple[str, str]] = [
    ("Sequential: one arm at a time, each alone on the device (fair)", "sequential"),
    ("Concurrent: all arms at once, sharing the device", "concurrent"),
]

def length_choices(max_new_tokens: int) -> list[tuple[str, str]]:
    """The report-length radio's choices; natural length first (the default, the per-report speed-up)."""
    return [("Natural length (default): each arm stops at the end of its report", "natural"),
            (f"Fixed length ({max_new_tokens} tokens, throughput): <eos> ignored", "fixed")]


ARM_LABELS: dict[str, str] = {
    "ar": "AR: token by token",
    "echo": "ECHO: one forward per block",
    "teacher": "Teacher: multi-step block diffusion",
}
_INTRO = (
    "The same study drafted live by the AR baseline and by ECHO (optionally the multi-step teacher) on this "
    "server's device; each panel shows its report as the blocks are committed. The figures are those the samplers "
    "report for this run; the texts are what `echo-report --sampler ar|echo|teacher --json` prints for the same "
    "image and settings. No draft is saved. By default each arm writes its report to its natural end, so the "
    "speed-up is per real report; *Fixed length* makes every arm write the same number of tokens (a throughput "
    "figure, as the benchmark measures)."
)


def figure_rows(arms: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """The figures table from per-arm records (``ArmProgress.to_json``): one row per finished arm, in race order,
    rounded as ``echo-report --json`` rounds them."""
    rows = []
    for name, arm in arms.items():
        if not arm["done"]:
            continue
        rows.append([ARM_TITLES[name], arm["model"], arm["model_revision"], count_text(arm["parameters"]),
                     round(arm["seconds"], 4), round(arm["first_block_seconds"], 4), arm["forward_passes"],
                     arm["model_calls"], arm["tokens"], round(arm["tokens_per_forward"], 4),
                     round(arm["tokens_per_second"], 2)])
    return rows


def speed_plot(summary: dict[str, Any]) -> Image.Image:
    """Bar charts of seconds per report and tokens per second per arm, titled with the speed-up.

    Uses matplotlib's object API (no pyplot): pyplot's global state is not safe in a multi-threaded server.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = summary["order"]
    arms = [summary["arms"][n] for n in names]
    labels = [ARM_TITLES[n] for n in names]
    colours = {"ar": "#757575", "echo": "#1565c0", "teacher": "#f9a825"}
    fig = Figure(figsize=(8.0, 2.8), dpi=100)
    FigureCanvasAgg(fig)
    for i, (key, title) in enumerate((("seconds", "seconds per report (lower is faster)"),
                                      ("tokens_per_second", "tokens per second (higher is faster)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        values = [a[key] for a in arms]
        bars = ax.barh(labels, values, color=[colours[n] for n in names])
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], padding=3, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.margins(x=0.25)
    speedup = summary.get("speedup")
    length = summary["length"]
    tokens = summary["settings"]["max_new_tokens"]
    unit = f"for {tokens} tokens (fixed length, throughput)" if length == "fixed" else "per report (natural length)"
    heading = f"ECHO {speedup:.2f}× faster than AR {unit}" if speedup else f"ECHO vs AR ({length} length)"
    fig.suptitle(f"{heading} ({summary['mode']}, {'warm' if summary['warmup'] else 'cold'}, {summary['device']})",
                 fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


def _status(state: ArmProgress | None, *, mode: str) -> str:
    """One Markdown line under a panel: waiting, decoding (blocks, seconds) or the finished figures."""
    if state is None:
        return "*Not in this race* (tick *Include the teacher*)."
    if state.draft is not None:
        r = state.draft.result
        done = (f"**Done**: {r.seconds:.3f} s, {len(r.blocks)} blocks, {r.tokens} tokens, "
                f"{r.tokens_per_forward:.2f} tokens/forward, {r.tokens_per_second:.1f} tokens/s.")
        warnings = state.draft.check_warnings
        if not warnings:
            return done + " The report check passed."
        n = len(warnings)
        return done + f"\n\n⚠ **{n} warning{'s' if n > 1 else ''} on this draft**: " + "; ".join(warnings) + "."
    if not state.started:
        return "Waiting for the arm before it." if mode == "sequential" else "Starting…"
    return f"Decoding: block {state.blocks}, {state.seconds:.2f} s."


@contextlib.contextmanager
def _whole_device(gate: GenerationGate, lock: threading.Lock,
                  on_wait: Callable[[int], None] | None = None) -> Iterator[None]:
    """Hold every drafting slot of ``gate`` for the ``with`` body, so no draft shares the device with a race.

    Why the lock: two races each holding some of the slots and waiting for the rest would wait forever; only
    one race collects slots at a time (the next one then waits in the gate's line, bounded and shown).
    """
    with contextlib.ExitStack() as held:
        with lock:
            for _ in range(gate.slots):
                held.enter_context(gate.admitted(on_wait=on_wait))
        yield


def _waiting(progress: Callable[..., Any]) -> Callable[[int], None]:
    """Show a race's place in the drafting line as its progress text while it waits for the device."""
    def show(ahead: int) -> None:
        progress(0.0, desc=f"Waiting for the device: {ahead} draft{'' if ahead == 1 else 's'} ahead of the race")

    return show


class RaceHandlers:
    """The Race tab's callbacks, bound to one :class:`~app.service.Services`.

    Callback parameters are positional-or-keyword because Gradio passes component values by position.
    """

    def __init__(self, services: Services):
        self.services = services
        self.settings = services.settings
        self.race_service = RaceService(services.drafting)
        # One per gate (so per Services), whoever builds handlers on it: see _whole_device.
        self._collecting: threading.Lock = services.extra.setdefault("race_slot_lock", threading.Lock())

    def _user(self, request: gr.Request | None) -> str:
        name = getattr(request, "username", None) if request is not None else None
        return str(name) if name else self.settings.local_user

    def upload(self, files: list[str] | None, request: gr.Request | None = None) -> tuple[Any, ...]:
        """Store the uploaded views as a new study (de-identified, uploads deleted).

        Always a new study: races save no draft, so appending to the last study would mix two patients' views.
        Outputs: study id, files (cleared), input warnings.
        """
        with user_errors():
            if not files:
                return gr.skip(), None, ""
            study, warnings = ingest_uploads(as_paths(files), store=self.services.store, owner=self._user(request),
                                             upload_cache_dir=self.settings.upload_cache_dir)
            return study.id, None, "\n".join(warnings)

    def languages(self, model: str = "") -> Any:
        """Language choices of the chosen ECHO model (read from its config, without loading weights)."""
        with user_errors():
            info = self.services.drafting.model_info(model)
            return gr.update(choices=list(info.languages), value=info.languages[0])

    def _race(self, files: Any, study_id: str, *, user: str, model: str, include_teacher: bool, mode: str,
              warmup: bool, indication: str, language: str, max_new_tokens: float, temperature: float,
              seed: float | None, length: str = "natural",
              on_phase: Callable[[str], None] | None = None) -> tuple[str, Iterator[RaceUpdate]]:
        """The study to race on (uploads become a new study) and the race's updates."""
        from echo_model.sampling import SamplerConfig

        if length not in LENGTHS:
            raise ValueError(f"race length must be one of {list(LENGTHS)}, got {length!r}")
        if files:
            study, _ = ingest_uploads(as_paths(files), store=self.services.store, owner=user,
                                      upload_cache_dir=self.settings.upload_cache_dir)
        elif (study_id or "").strip():
            study = self.services.store.get_study(study_id.strip(), user)
        else:
            raise ValueError("no image: upload one or more views (PNG, JPEG or DICOM) or give a study id")
        for note in (f"{img.label}: {w}" for img in study.images for w in img.warnings):
            gr.Warning(note)
        # The settings echo-report takes (--max-new-tokens, --temperature, --seed); the rest at its defaults.
        config = SamplerConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                               seed=None if seed is None else int(seed), fixed_length=length == "fixed")
        updates = self.race_service.run(
            load_study_images(study), model=model or None, config=config, include_teacher=bool(include_teacher),
            mode=mode, warmup=bool(warmup), indication=indication.strip() or None, language=language,
            on_phase=on_phase,
        )
        return study.id, updates

    def race_stream(
        self,
        files: list[str] | None = None,
        study_id: str = "",
        indication: str = "",
        language: str = "en",
        model: str = "",
        include_teacher: bool = False,
        mode: str = "sequential",
        warmup: bool = True,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        seed: int = 0,
        length: str = "natural",
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008  (Gradio injects progress through this default)
    ) -> Iterator[tuple[Any, ...]]:
        """Race the arms on the uploaded views (or the views of ``study_id``); one update per committed block per arm.

        ``length``: ``natural`` (each arm stops at the end of its report) or ``fixed`` (``max_new_tokens`` each,
        ``<eos>`` ignored: throughput). Outputs follow :data:`RACE_FIELDS`; the last update carries the figures,
        the plot and the race record.
        """
        with user_errors(), _whole_device(self.services.gate, self._collecting, _waiting(progress)):
            race_study, updates = self._race(
                files, study_id, user=self._user(request), model=model, include_teacher=include_teacher, mode=mode,
                warmup=warmup, indication=indication, language=language, max_new_tokens=max_new_tokens,
                temperature=temperature, seed=seed, length=length,
                on_phase=lambda phase: progress(0.0, desc=phase),
            )
            for update in updates:
                yield self._outputs(update, study_id=race_study, mode=mode)

    def race(
        self,
        files: list[str] | None = None,
        study_id: str = "",
        indication: str = "",
        language: str = "en",
        model: str = "",
        include_teacher: bool = False,
        mode: str = "sequential",
        warmup: bool = True,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        seed: int = 0,
        length: str = "natural",
        request: gr.Request | None = None,
    ) -> dict[str, Any]:
        """Run the race to its end and return its record: settings, per-arm reports and figures, speed-ups, how.

        The figures are the samplers' own, unrounded (``speedup`` = AR seconds / ECHO seconds, per report at the
        default natural length; for ``max_new_tokens`` tokens with ``length="fixed"``).
        """
        with user_errors(), _whole_device(self.services.gate, self._collecting):
            race_study, updates = self._race(
                files, study_id, user=self._user(request), model=model, include_teacher=include_teacher, mode=mode,
                warmup=warmup, indication=indication, language=language, max_new_tokens=max_new_tokens,
                temperature=temperature, seed=seed, length=length,
            )
            summary: dict[str, Any] | None = None
            for update in updates:
                summary = update.summary or summary
            if summary is None:
                raise RuntimeError("the race ended before every arm had finished")
            return {**summary, "study_id": race_study}

    def _outputs(self, update: RaceUpdate, *, study_id: str, mode: str) -> tuple[Any, ...]:
        """One streaming update, in :data:`RACE_FIELDS` order."""
        texts = [update.arms[n].text if n in update.arms else "" for n in ARMS]
        statuses = [_status(update.arms.get(n), mode=mode) for n in ARMS]
        summary = update.summary
        if summary is None:
            racing = ", ".join(f"{ARM_TITLES[n]} block {s.blocks}" for n, s in update.arms.items() if s.started)
            how = f"Racing ({mode}): {racing}. The speed-up appears when every arm has finished."
            rows = figure_rows({n: s.to_json() for n, s in update.arms.items()})
            return (*texts, *statuses, how, rows, None, None, study_id)
        record = {**summary, "study_id": study_id}
        return (*texts, *statuses, summary["how"], figure_rows(summary["arms"]), speed_plot(summary), record,
                study_id)


def build_race_tab(services: Services, *, draft_study_id: gr.Textbox | None = None) -> RaceHandlers:
    """Create the "Race" tab inside the caller's ``gr.Tabs`` (within ``gr.Blocks``) and wire its events.

    Args:
        services: the app's services (settings, model service, store).
        draft_study_id: the Draft tab's study id box; when given, a button copies it into the race.
    Returns:
        the bound callbacks (tests call them directly).
    """
    settings = services.settings
    h = RaceHandlers(services)
    languages = list(services.drafting.model_info(settings.default_model).languages)
    direct: dict[str, Any] = {"queue": False}
    private: dict[str, Any] = {"api_visibility": "private"}
    with gr.Tab("Race", id="race"):
        gr.Markdown(_INTRO, elem_id="race-intro")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                files = gr.File(label="Views of one study (PNG, JPEG or DICOM)", file_count="multiple",
                                type="filepath", elem_id="race-upload")
                study_id = gr.Textbox("", label="Study id (set by an upload, or paste one)", elem_id="race-study-id")
                use_draft = gr.Button("Use the Draft tab's study", size="sm", visible=draft_study_id is not None)
                input_warnings = gr.Textbox(label="Input warnings", lines=1, interactive=False,
                                            elem_id="race-warnings")
                indication = gr.Textbox("", label="Indication (optional)", lines=1, elem_id="race-indication")
                language = gr.Dropdown(label="Language", choices=languages, value=languages[0],
                                       allow_custom_value=True, elem_id="race-language")
                model = gr.Dropdown(label="ECHO model", choices=list(settings.models), value=settings.default_model,
                                    elem_id="race-model")
                gr.Markdown(f"AR model: `{h.race_service.ar_model}` (ECHO_RACE_AR_MODEL)", elem_id="race-ar-model")
                include_teacher = gr.Checkbox(False, label="Include the teacher (multi-step)",
                                              elem_id="race-teacher")
                length = gr.Radio(length_choices(settings.max_new_tokens), value=LENGTHS[0], label="Report length",
                                  elem_id="race-length")
                mode = gr.Radio(MODE_CHOICES, value=MODES[0], label="Mode", elem_id="race-mode")
                warmup = gr.Checkbox(True, label="Warm up first (each arm drafts once, untimed)",
                                     elem_id="race-warmup")
                with gr.Accordion("Decoding settings", open=False):
                    max_new_tokens = gr.Slider(8, 1024, value=settings.max_new_tokens, step=8, label="Max new tokens")
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                    seed = gr.Number(value=0, precision=0, label="Seed (used when temperature > 0)")
                with gr.Row():
                    start = gr.Button("Race", variant="primary", elem_id="race-btn")
                    stop = gr.Button("Stop", variant="stop", elem_id="race-stop-btn")
                # The /race endpoint (the whole race as JSON) needs an event; nobody clicks this button.
                race_json = gr.Button("Race (JSON)", visible=False)
            with gr.Column(scale=3):
                how = gr.Markdown("Press **Race**: how the race was run and the speed-up appear here.",
                                  elem_id="race-how")
                panels: dict[str, Any] = {}
                with gr.Row(equal_height=True):
                    for name in ARMS:
                        with gr.Column(visible=name != "teacher") as column:
                            panels[f"{name}_text"] = gr.Textbox(label=ARM_LABELS[name], lines=10, interactive=False,
                                                                elem_id=f"race-{name}-text")
                            panels[f"{name}_status"] = gr.Markdown(elem_id=f"race-{name}-status")
                        panels[f"{name}_column"] = column
                figures = gr.Dataframe(headers=FIGURE_HEADERS, interactive=False, elem_id="race-figures",
                                       label="Figures (the samplers' own, rounded as echo-report --json rounds)")
                plot = gr.Image(label="Speed", type="pil", format="png", interactive=False, elem_id="race-plot")
                with gr.Accordion("Race record (JSON, as /race returns it)", open=False):
                    record = gr.JSON(label="Race record", elem_id="race-record")

    comps = {**panels, "how": how, "figures": figures, "plot": plot, "record": record, "study_id": study_id}
    outputs = [comps[name] for name in RACE_FIELDS]
    inputs = [files, study_id, indication, language, model, include_teacher, mode, warmup, max_new_tokens,
              temperature, seed, length]
    # As the Draft tab's events: Gradio hands races over at once, the device is held in Services.gate.
    gpu: dict[str, Any] = {"concurrency_id": "gpu", "concurrency_limit": None}
    # A refused upload leaves the file list (its reason is the error message), so the next upload works.
    files.upload(h.upload, [files], [study_id, files, input_warnings], **direct, **private).failure(
        lambda: None, None, [files], **direct, **private)
    # Progress (loading, warm-up) on the how-it-ran line only, so that it never covers a streaming panel.
    racing = start.click(h.race_stream, inputs, outputs, api_name="race_stream", show_progress="minimal",
                         show_progress_on=[how], trigger_mode="once", **gpu)
    race_json.click(h.race, inputs, [record], api_name="race", **gpu)
    stop.click(None, None, None, cancels=[racing], **direct, **private)
    include_teacher.change(lambda on: gr.Column(visible=bool(on)), [include_teacher], [panels["teacher_column"]],
                           **direct, **private)
    model.change(h.languages, [model], [language], **direct, **private)
    max_new_tokens.change(lambda n: gr.Radio(choices=length_choices(int(n))), [max_new_tokens], [length],
                          **direct, **private)
    if draft_study_id is not None:
        use_draft.click(lambda value: value, [draft_study_id], [study_id], **direct, **private)
    return h

