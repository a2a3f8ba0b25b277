"""The AR vs ECHO race: one study drafted live by the AR baseline and by ECHO (optionally the teacher too).

Why a module of its own, without Gradio: the Race tab promises two things that must be checkable without a
server: the figures it shows are exactly those the samplers report for that run (copied from each arm's
:class:`~echo_model.sampling.GenerationResult`, never re-measured), and each panel's text is exactly what
``echo-report`` prints for the same image and settings (each arm goes through the same
:meth:`~echo_model.drafting.Drafter.stream` as the CLI, with the CLI's sampler settings).

How a race runs (:meth:`RaceService.run`):

1. every arm's checkpoint is loaded and the language checked, so no loading happens inside a timed run;
2. each arm gets a thread of its own that first drafts the same report once, untimed (the warm-up, on by
   default; the warm-ups run one at a time), so that first-call costs stay out of the figures. Why the whole
   run, in that thread: on CUDA these costs are per thread (library handles) and per tensor shape (kernel
   selection), and the decoding shapes grow to the report's length. Measured on an H200 with the embedded
   models: AR took 0.84 s after a one-block warm-up in another thread, 0.07-0.10 s after a full one in its own;
3. the timed runs, each in its arm's thread, which only decodes and queues the committed blocks, so the
   consumer (a browser, an API client) never stalls a sampler or gets timed into it. ``sequential`` (default,
   the fair one): AR, then ECHO, then the teacher, each alone on the device while it decodes; ``concurrent``:
   all arms at once, sharing the device (each arm's seconds then include waiting for the others);
4. one :class:`RaceUpdate` per committed block per arm; the last also carries the summary: every arm's
   figures, speed-up = AR seconds / ECHO seconds, the tokens/s ratio, the device and how the race was run.

Report length (:data:`LENGTHS`): *natural* (default) lets each arm stop at the end of its report (``<eos>``), as
in use, so the speed-up is per real report; *fixed* (``SamplerConfig(fixed_length=True)``) makes every arm write
exactly ``max_new_tokens`` tokens, ``<eos>`` ignored, which measures throughput (the benchmark's mode) and
flatters block decoding when reports are short.

Nothing here imports torch or loads a model at import time (the app starts without a model).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from .service import DraftingService
from .settings import EMBEDDED

if TYPE_CHECKING:  # torch/transformers load only when a race starts
    from echo_model.drafting import Draft, Drafter
    from echo_model.sampling import BlockEvent, GenerationResult, SamplerConfig

__all__ = ["ARMS", "ARM_TITLES", "LENGTHS", "MODES", "ArmProgress", "RaceArm", "RaceService", "RaceUpdate", "count_text",
           "how_it_ran", "result_figures"]

#: Arms in race order; an arm's name is the sampler it runs.
ARMS: tuple[str, ...] = ("ar", "echo", "teacher")
ARM_TITLES: dict[str, str] = {"ar": "AR", "echo": "ECHO", "teacher": "teacher"}
MODES: tuple[str, ...] = ("sequential", "concurrent")
#: Report lengths: natural (each arm stops at its end of report; the default) or fixed (max_new_tokens each).
LENGTHS: tuple[str, ...] = ("natural", "fixed")


def result_figures(result: GenerationResult) -> dict[str, Any]:
    """The cost figures of one run, exactly as the sampler reported them (no rounding: the UI rounds for show)."""
    return result.figures.to_json(rounded=False)


@dataclass(frozen=True)
class RaceArm:
    """One contestant: the sampler ``name`` on the checkpoint(s) of ``drafter``.

    Attributes:
        name: the sampler (``ar``, ``echo`` or ``teacher``), also the arm's name.
        label: the model as configured (a model-menu label, or ``ECHO_RACE_AR_MODEL`` for the AR arm).
        drafter: loads and caches the checkpoint and runs the sampler, as for ``echo-report``.
    """

    name: str
    label: str
    drafter: Drafter


@dataclass
class ArmProgress:
    """What one panel shows: the report so far and, once the arm has finished, its sampler's figures.

    Attributes:
        arm: the arm's name (= sampler).
        model: the model as configured; ``source``/``revision``: what was loaded.
        block_length: b of the arm's checkpoint (the AR sampler streams on the same block grid).
        parameters: parameter count, shown because the AR arm's model may differ from ECHO's.
        device: the torch device the arm ran on.
        text: the report decoded so far (the finished report once ``done``).
        blocks: committed blocks so far; ``seconds``: the sampler's clock at the last one.
        draft: the finished draft (figures in ``draft.result``).
    """

    arm: str
    model: str
    source: str
    revision: str
    block_length: int
    parameters: int
    device: str
    text: str = ""
    blocks: int = 0
    seconds: float = 0.0
    done: bool = False
    draft: Draft | None = None

    @property
    def started(self) -> bool:
        return self.blocks > 0 or self.done

    def to_json(self) -> dict[str, Any]:
        """Provenance, report and (once done) the figures copied from the sampler's result."""
        data: dict[str, Any] = {
            "sampler": self.arm, "model": self.model, "model_source": self.source, "model_revision": self.revision,
            "block_length": self.block_length, "parameters": self.parameters, "device": self.device,
            "report": self.text, "blocks": self.blocks, "done": self.done,
        }
        if self.draft is not None:
            data.update(result_figures(self.draft.result))
            # the report check's warnings (the tail of echo-report --json's "warnings", after the input warnings)
            data["report_check"] = list(self.draft.check_warnings)
        return data


@dataclass(frozen=True)
class RaceUpdate:
    """One committed block of one arm, with every arm's state at that moment.

    Attributes:
        arm: the arm that committed the block.
        block: its 0-based index (-1 if the sampler ended without flagging a last block).
        arms: a snapshot of every arm, in race order.
        summary: the race's figures and description; only on the last update of the race.
    """

    arm: str
    block: int
    arms: dict[str, ArmProgress]
    summary: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Message:
    """What an arm's thread hands the consumer: warmed up (``ready``), a committed block, the Draft, or an error."""

    arm: str
    ready: bool = False
    event: BlockEvent | None = None
    draft: Draft | None = None
    error: BaseException | None = None


@dataclass(kw_only=True)
class _ArmRun:
    """One arm's thread: its warm-up, then, once ``go`` is set, its timed run; both in that same thread.

    Why one thread for both: on CUDA the first run in a new thread pays per-thread set-up (library handles),
    and the first run of each tensor shape pays kernel selection, so only the same run in the same thread
    leaves neither in the timed run (see the module docstring). Why a thread at all: the sampler's clock runs
    while its generator is suspended, so a consumer that does slow work between blocks (a browser update)
    would be timed into the figures; the thread only decodes and queues.
    """

    arm: RaceArm
    views: list[Image.Image]
    config: SamplerConfig
    warmup: bool
    common: dict[str, Any]
    out: queue.SimpleQueue[_Message]
    stop: threading.Event
    go: threading.Event = dataclasses.field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"race-{self.arm.name}", daemon=True).start()

    def _run(self) -> None:
        from echo_model.sampling import drain

        name = self.arm.name
        try:
            if self.warmup:  # the same run, untimed: first-call costs are per thread and per tensor shape
                self.arm.drafter.draft(self.views, sampler=name, config=self.config, **self.common)
            self.out.put(_Message(name, ready=True))
            self.go.wait()
            if self.stop.is_set():  # the race ended (an error, a cancel) before this arm's turn
                return
            events = self.arm.drafter.stream(self.views, sampler=name, config=self.config, **self.common)
            while not self.stop.is_set():
                try:
                    event = next(events)
                except StopIteration as end:  # ended without flagging a last block
                    self.out.put(_Message(name, draft=end.value))
                    return
                self.out.put(_Message(name, event=event, draft=drain(events) if event.done else None))
                if event.done:
                    return
            events.close()
        except BaseException as err:  # noqa: BLE001  (handed to the consumer, which re-raises it)
            self.out.put(_Message(name, error=err))


def _expect_ready(out: queue.SimpleQueue[_Message]) -> None:
    """Wait until the arm just started has warmed up (its first message); re-raise its error."""
    message = out.get()
    if message.error is not None:
        raise message.error


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


class RaceService:
    """Runs races between the AR arm, the ECHO arm and optionally the teacher arm.

    Args:
        drafting: the app's model service; the ECHO and teacher arms use its (menu) models.
        ar_model: the AR arm's checkpoint (default ``settings.race_ar_model``): ``embedded`` for the embedded
            Stage I checkpoint, a folder or a hub id. One of the app's menu models shares the app's cache.
    """

    def __init__(self, drafting: DraftingService, *, ar_model: str | None = None):
        self.drafting = drafting
        self.ar_model = (ar_model or drafting.settings.race_ar_model).strip()
        if not self.ar_model:
            raise ValueError(f"the AR arm needs a model, got {ar_model!r}")
        self._ar_drafter: Drafter | None = None
        self._lock = threading.Lock()

    def ar_drafter(self) -> Drafter:
        """The AR arm's Drafter, created on first use."""
        if self.ar_model in self.drafting.settings.models:
            return self.drafting.drafter(self.ar_model)
        with self._lock:
            if self._ar_drafter is None:
                from echo_model.drafting import Drafter

                source = None if self.ar_model == EMBEDDED else self.ar_model
                settings = self.drafting.settings
                self._ar_drafter = Drafter(source, device=settings.device, quantize=settings.quantize)
            return self._ar_drafter

    def arms(self, model: str | None, *, include_teacher: bool = False) -> list[RaceArm]:
        """The contestants: AR on the AR model, ECHO (and the teacher) on the app model ``model``."""
        label = self.drafting.check_model(model)
        arms = [RaceArm("ar", self.ar_model, self.ar_drafter()), RaceArm("echo", label, self.drafting.drafter(label))]
        if include_teacher:
            arms.append(RaceArm("teacher", label, self.drafting.drafter(label)))
        return arms

    def _prepare(self, arm: RaceArm, language: str) -> ArmProgress:
        """Load the arm's checkpoint (outside every timed run) and check it can write ``language``."""
        from echo_model.loading import CheckpointError

        title = ARM_TITLES[arm.name]
        try:
            checkpoint = arm.drafter.checkpoint(arm.name)
        except CheckpointError as err:
            raise CheckpointError(f"{title} arm (model {arm.label!r}): {err}") from None
        spec = checkpoint.spec
        if language not in spec.languages:
            raise ValueError(f"language {language!r} is not supported by the {title} arm's model {arm.label!r}; "
                             f"supported: {list(spec.languages)}")
        return ArmProgress(
            arm=arm.name, model=arm.label, source=checkpoint.source, revision=spec.revision,
            block_length=spec.block_length, parameters=sum(p.numel() for p in checkpoint.model.model.parameters()),
            device=str(checkpoint.model.device),
        )

    def run(
        self,
        images: Sequence[Image.Image],
        *,
        model: str | None,
        config: SamplerConfig,
        include_teacher: bool = False,
        mode: str = "sequential",
        warmup: bool = True,
        indication: str | None = None,
        language: str = "en",
        on_phase: Callable[[str], None] | None = None,
    ) -> Iterator[RaceUpdate]:
        """Race the arms on ``images``; one :class:`RaceUpdate` per committed block per arm.

        ``on_phase`` hears what happens between updates (loading, warming up, racing), for a progress line.
        A worker's error is re-raised here; leaving the iteration early stops the workers at their next block.
        """
        if mode not in MODES:
            raise ValueError(f"race mode must be one of {list(MODES)}, got {mode!r}")
        if not images:
            raise ValueError("no image: upload one or more views (PNG, JPEG or DICOM) or give a study id")
        notify = on_phase or (lambda _phase: None)
        views = list(images)
        arms = self.arms(model, include_teacher=include_teacher)
        notify("Loading the models")
        progress = {arm.name: self._prepare(arm, language) for arm in arms}
        common: dict[str, Any] = {"indication": indication or None, "lang": language}
        out: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        stop = threading.Event()
        runs = {arm.name: _ArmRun(arm=arm, views=views, config=config, warmup=warmup, common=common, out=out, stop=stop)
                for arm in arms}
        waves = [list(runs)] if mode == "concurrent" else [[name] for name in runs]
        finished = 0
        try:
            notify("Warming up: each arm drafts the report once, untimed" if warmup else "Starting the arms")
            for run in runs.values():  # warm-ups one after another: each alone on the device, as in the race
                run.start()
                _expect_ready(out)
            notify(f"Racing ({mode})")
            for wave in waves:
                for name in wave:
                    runs[name].go.set()
                running = len(wave)
                while running:
                    message = out.get()
                    if message.error is not None:
                        raise message.error
                    state = progress[message.arm]
                    if message.event is not None:
                        state.text, state.seconds = message.event.text, message.event.seconds
                        state.blocks += 1
                    if message.draft is not None:
                        state.done, state.draft, state.text = True, message.draft, message.draft.report
                        running -= 1
                        finished += 1
                    summary = None
                    if finished == len(arms):
                        summary = self._summary(progress, mode=mode, warmup=warmup, config=config,
                                                indication=indication, language=language)
                    yield RaceUpdate(arm=message.arm, block=message.event.block if message.event else -1,
                                     arms={k: dataclasses.replace(v) for k, v in progress.items()}, summary=summary)
        finally:
            stop.set()
            for run in runs.values():
                run.go.set()  # threads still waiting for their turn end without decoding

    def _summary(self, progress: dict[str, ArmProgress], *, mode: str, warmup: bool, config: SamplerConfig,
                 indication: str | None, language: str) -> dict[str, Any]:
        """The race's record: settings, every arm's figures (verbatim), speed-ups and how it was run."""
        import torch

        from echo_model.device import device_name

        results = {name: state.draft.result for name, state in progress.items() if state.draft is not None}
        ar, echo = results["ar"], results["echo"]
        devices = sorted({state.device for state in progress.values()})
        summary: dict[str, Any] = {
            "live": True,
            "mode": mode,
            "length": "fixed" if config.fixed_length else "natural",
            "warmup": warmup,
            "device": " + ".join(device_name(d) for d in devices),
            "same_device": len(devices) == 1,
            "torch_threads": torch.get_num_threads() if any(d == "cpu" for d in devices) else None,
            "order": list(progress),
            "settings": {"indication": indication or None, "language": language,
                         "max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                         "seed": config.seed, "threshold": config.threshold, "fixed_length": config.fixed_length},
            "arms": {name: state.to_json() for name, state in progress.items()},
            "speedup": _ratio(ar.seconds, echo.seconds),
            "tokens_per_second_ratio": _ratio(echo.tokens_per_second, ar.tokens_per_second),
        }
        if "teacher" in results:
            teacher = results["teacher"]
            summary["speedup_over_teacher"] = _ratio(teacher.seconds, echo.seconds)
            summary["tokens_per_second_ratio_over_teacher"] = _ratio(echo.tokens_per_second, teacher.tokens_per_second)
        summary["how"] = how_it_ran(summary)
        return summary


def count_text(n: int) -> str:
    """Parameter count for people: 4.7M, 8.3B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def how_it_ran(summary: dict[str, Any]) -> str:
    """A Markdown paragraph saying how the race was run and what its figures mean."""
    arms = summary["arms"]
    names = [ARM_TITLES[name] for name in summary["order"]]
    threads = f", {summary['torch_threads']} torch thread(s)" if summary.get("torch_threads") else ""
    where = "all arms on the same device" if summary["same_device"] else "**the arms ran on different devices**"
    parts = [f"**Live run** on {summary['device']}{threads}; {where}."]
    if summary["mode"] == "sequential":
        parts.append(f"**Sequential**: {', then '.join(names)}, each alone on the device while it decodes.")
    else:
        parts.append("**Concurrent**: the arms decode at the same time in separate threads and share the device, "
                     "so each arm's seconds include time spent waiting for the others.")
    if summary["warmup"]:
        parts.append("**Warm-up done**: each arm drafted the same report once, untimed, in the thread that then "
                     "ran it (loading and first-call costs excluded).")
    else:
        parts.append("**No warm-up**: first-call costs are included (loading never is).")
    parts.append("Figures are the samplers' own: seconds from the start of decoding (prefill and vision encoder "
                 "included) to the last token, forward passes = denoising forwards (AR: one per token).")
    speedup, rate = summary.get("speedup"), summary.get("tokens_per_second_ratio")
    fixed = summary["length"] == "fixed"
    tokens = (summary.get("settings") or {}).get("max_new_tokens")
    unit = f"for {tokens} tokens" if fixed and tokens else "per report"
    if fixed:
        parts.append(f"**Fixed length** ({tokens or 'max new'} tokens, throughput): every arm writes exactly that "
                     "many tokens, `<eos>` ignored, so the speed-up is a throughput figure, not the time of a real "
                     "report (choose *Natural length* for that).")
    else:
        parts.append("**Natural length** (the default): each arm stops at the end of its report, as in use.")
    if speedup is not None and rate is not None:
        parts.append(f"ECHO vs AR ({summary['length']} length): **{speedup:.2f}×** faster {unit} (AR seconds / "
                     f"ECHO seconds), **{rate:.2f}×** the tokens per second.")
    if summary.get("speedup_over_teacher") is not None:
        parts.append(f"ECHO vs teacher: {summary['speedup_over_teacher']:.2f}× faster {unit}.")
    if arms["ar"]["tokens"] != arms["echo"]["tokens"]:
        parts.append(f"The reports differ in length (AR {arms['ar']['tokens']}, ECHO {arms['echo']['tokens']} "
                     "tokens): the tokens/s ratio compares speeds, the seconds ratio whole reports.")
    if arms["ar"]["parameters"] != arms["echo"]["parameters"]:
        parts.append(f"The models differ in size (AR {count_text(arms['ar']['parameters'])}, ECHO "
                     f"{count_text(arms['echo']['parameters'])} parameters): set ECHO_RACE_AR_MODEL to an AR model of "
                     "ECHO's size for a like-for-like race.")
    return " ".join(parts)
