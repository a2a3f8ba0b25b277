"""Draft many studies into one JSON Lines file (``echo-report --batch``).

The run: studies found by :func:`echo_model.studies.discover_studies` are drafted ``batch_size`` at a time through
one sampler call per batch (:func:`echo_model.drafting.generate_reports`: a batch decodes in the forwards of its
longest study). A background thread reads, decodes and encodes the next batch's images while the current batch
drafts. Each finished study is one line of the output, written with a single ``write`` on a file opened with
``O_APPEND`` and then ``fsync``-ed, so an interrupted run (Ctrl-C, ``kill -9``, a lost node) leaves whole lines
only; :func:`read_finished` drops an unterminated last line (a power cut) when a run is resumed.

Rows are study records (``echo.study/1``, :mod:`echo_model.data.records`) with a ``draft`` object, or error rows
(``{"schema", "id", "error"}``) for studies that could not be read. De-identified unless ``keep_paths``: the id is
the study's keyed hash (:func:`echo_model.studies.study_key`), images carry no paths, warnings and errors name
views ("view 2"), never files.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

from .data.records import SCHEMA, DraftInfo, ImageRef, StudyRecord
from .data.report_text import parse_report
from .report_check import check_report
from .sampling import GenerationResult, SamplerConfig
from .studies import StudyFiles, study_key

if TYPE_CHECKING:
    from .processing import StudyPrompt

__all__ = ["BatchOptions", "BatchSummary", "Drafted", "LineWriter", "Prepared", "draft_studies", "read_finished"]

#: The ``source`` of drafted records.
SOURCE = "echo-report --batch"


@dataclass(frozen=True)
class BatchOptions:
    """What every study of a batch run is drafted with."""

    sampler: str = "echo"
    batch_size: int = 8
    indication: str | None = None
    lang: str = "en"
    config: SamplerConfig = field(default_factory=SamplerConfig)
    keep_paths: bool = False
    #: samplers that re-draft, in turn, the studies whose draft fails the report check (``--fallback``)
    fallback: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from .sampling import check_fallback

        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_fallback(self.sampler, self.fallback)


@dataclass
class Prepared:
    """One study read and encoded, or the reason it could not be."""

    study: StudyFiles
    key: str
    prompt: StudyPrompt | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    #: the decoded views, kept only while a fallback sampler may need to encode them for its own checkpoint
    images: list | None = None


@dataclass
class Drafted:
    """A study's final draft: the sampler and checkpoint that wrote it, and the drafts it replaced."""

    result: GenerationResult
    sampler: str
    model: str
    model_revision: str
    normalized: bool
    replaced: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, result: GenerationResult, sampler: str, checkpoint: Any, replaced: Sequence[dict[str, Any]] = ()) -> Drafted:
        return cls(result, sampler, checkpoint.source, checkpoint.spec.revision,
                   checkpoint.spec.report_style == "normalized", list(replaced))

    def check_warnings(self, lang: str) -> list[str]:
        return list(check_report(self.result.text, normalized=self.normalized, language=lang).warnings)

    def attempt(self, lang: str) -> dict[str, Any]:
        """This draft as an entry of the next one's ``replaced`` (the keys of ``Draft.attempt``)."""
        return {"sampler": self.sampler, "model": self.model, "model_revision": self.model_revision,
                "report": self.result.text, "warnings": self.check_warnings(lang),
                "seconds": round(self.result.seconds, 4), "tokens": self.result.tokens}


@dataclass
class BatchSummary:
    """What a run did (this process's share)."""

    drafted: int = 0
    errors: int = 0
    redrafted: int = 0  # drafts written again by a fallback sampler (a study counts once per fallback)
    model_calls: int = 0
    load_seconds: float = 0.0
    draft_seconds: float = 0.0
    seconds: float = 0.0


class LineWriter:
    """Appends whole JSON lines: one ``os.write`` per line on an ``O_APPEND`` descriptor, then ``fsync``."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, row: dict[str, Any]) -> None:
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        if written != len(data):  # a full disk; never leave half a line behind
            os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_END) - written)
            raise OSError(f"{self.path.name}: disk full: wrote {written} of {len(data)} bytes of a line")
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_finished(path: str | os.PathLike[str], *, repair: bool = True) -> dict[str, bool]:
    """The study ids already in an output file (id -> True for an error row).

    An unterminated last line (the write a power cut interrupted) is cut off when ``repair``, else ignored.

    Raises:
        ValueError: a complete line that is not a JSON object with an ``id`` (not an ``echo-report --batch``
            output), naming the line.
    """
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        os.truncate(path, end)
    done: dict[str, bool] = {}
    for n, raw in enumerate(data[:end].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(f"{path.name}: line {n} is not JSON; is this an echo-report --batch output?") from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise ValueError(f"{path.name}: line {n} has no study id; is this an echo-report --batch output?")  # noqa: TRY004
        done[row["id"]] = row.get("error") is not None
    return done


def error_row(key: str, error: str) -> dict[str, Any]:
    """The row of a study that could not be drafted."""
    return {"schema": SCHEMA, "id": key, "error": error}


def draft_row(prep: Prepared, result: GenerationResult, *, model: str, model_revision: str, normalized: bool,
              options: BatchOptions, sampler: str | None = None, replaced: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The study record of one drafted study (its report's sections, the run's figures, the warnings);
    ``sampler`` (default ``options.sampler``) wrote it, after the ``replaced`` drafts of a fallback run."""
    check = check_report(result.text, normalized=normalized, language=options.lang)
    parsed = parse_report(result.text)
    cfg = options.config
    keep = options.keep_paths
    info = DraftInfo(
        report=result.text,
        sampler=sampler or options.sampler,
        model=model,
        model_revision=model_revision,
        views=prep.study.views,
        warnings=(*prep.warnings, *check.warnings),
        figures=result.figures.to_json(),
        settings={"indication": options.indication, "lang": options.lang, "max_new_tokens": cfg.max_new_tokens,
                  "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
                  "threshold": cfg.threshold, "seed": cfg.seed},
        batch_size=options.batch_size,
        study=prep.study.identity.split(":", 1)[1] if keep else None,
        replaced=tuple(replaced),
    )
    images = tuple(ImageRef(path=p, view=v) for p, v in zip(prep.study.paths, prep.study.views)) if keep else ()
    record = StudyRecord(id=prep.key, findings=parsed.findings, impression=parsed.impression, images=images,
                         indication=options.indication, language=options.lang, source=SOURCE, draft=info)
    return record.to_dict()


def describe_error(err: BaseException, paths: Sequence[str], *, keep_paths: bool) -> str:
    """One line on why a study could not be read, naming views ("view 2"), not files (unless ``keep_paths``)."""
    from .imaging import ImageInputError

    if isinstance(err, OSError):
        reason = err.strerror or type(err).__name__
        text = f"{err.filename}: {reason}" if err.filename else f"cannot be read ({reason})"
    elif isinstance(err, ImageInputError):
        text = f"{err.name}: {err.problem}"
    else:
        text = str(err)
    text = " ".join(text.split())
    if not keep_paths:  # whatever a message quotes of a path or file name becomes the view's number
        for i, path in sorted(enumerate(paths), key=lambda item: -len(item[1])):
            text = text.replace(path, f"view {i + 1}")
        for i, path in enumerate(paths):
            text = text.replace(os.path.basename(path), f"view {i + 1}")
    return text


def prepare_study(study: StudyFiles, key: str, encode: Callable[[list], StudyPrompt], *, keep_paths: bool,
                  keep_images: bool = False) -> Prepared:
    """Read a study's views and encode its prompt; any failure becomes the study's ``error`` (never raised).
    ``keep_images``: keep the decoded views on the result (a fallback sampler encodes them for its checkpoint)."""
    from .imaging import load_study

    if study.error is not None:
        return Prepared(study, key, error=study.error)
    names = None if keep_paths else [f"view {i + 1}" for i in range(len(study.paths))]
    try:
        loaded = load_study(list(study.paths), names=names)
        prompt = encode([im.image for im in loaded])
    except Exception as err:  # noqa: BLE001 - one unreadable study is a row, never the end of the night's run
        return Prepared(study, key, error=describe_error(err, study.paths, keep_paths=keep_paths))
    return Prepared(study, key, prompt=prompt, warnings=[f"{im.name}: {w}" for im in loaded for w in im.warnings],
                    images=[im.image for im in loaded] if keep_images else None)


def prefetch(batches: Sequence[Sequence[StudyFiles]], prepare: Callable[[StudyFiles], Prepared], *,
             depth: int = 1) -> Iterator[tuple[list[Prepared], float]]:
    """Yield each batch prepared, with the seconds preparing it took; a thread prepares the next ``depth``
    batches while the caller drafts the current one."""
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        """Queue ``item`` unless the consumer has gone; False when it has."""
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for batch in batches:
                start = time.perf_counter()
                ready = [prepare(s) for s in batch]
                if not offer((ready, time.perf_counter() - start)):
                    return
            offer(None)
        except BaseException as err:  # noqa: BLE001 - handed to the drafting thread, which re-raises it
            offer(err)

    thread = threading.Thread(target=work, name="echo-batch-loader", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class _Finisher:
    """Checks, serialises and writes finished studies on a thread of its own, so the report check and the
    ``fsync`` of one batch overlap the drafting of the next (the forwards release the GIL)."""

    def __init__(self, writer: LineWriter, row: Callable[[Prepared, Drafted | None], dict[str, Any]], *,
                 bar: Any):
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._writer, self._row, self._bar = writer, row, bar
        self._thread = threading.Thread(target=self._work, name="echo-batch-writer", daemon=True)
        self._thread.start()

    def put(self, items: list[tuple[Prepared, Drafted | None]]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(items)

    def _work(self) -> None:
        while (items := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                for prep, result in items:
                    self._writer.write(self._row(prep, result))
                self._bar.update(len(items))
            except BaseException as err:  # noqa: BLE001 - re-raised in the drafting thread
                self._error = err

    def close(self) -> None:
        """Write what is queued, stop the thread, and raise its error if it had one."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def draft_studies(
    studies: Sequence[StudyFiles],
    *,
    key: bytes,
    writer: LineWriter,
    drafter: Any,
    options: BatchOptions,
    progress: IO[str] | None = None,
) -> BatchSummary:
    """Draft ``studies`` in batches and append one row per study to ``writer``.

    Args:
        key: the output's secret key (:func:`echo_model.studies.study_key`).
        drafter: a :class:`echo_model.drafting.Drafter` (its checkpoint for ``options.sampler`` is used).
        progress: where the tqdm bar goes (None = no bar).
    """
    from tqdm import tqdm

    from .drafting import generate_reports

    ck = drafter.checkpoint(options.sampler)
    fallbacks = [(name, drafter.checkpoint(name)) for name in options.fallback]

    def encode(images: list, checkpoint: Any = ck) -> StudyPrompt:
        return checkpoint.processor.encode(images, indication=options.indication, lang=options.lang)

    def prepare(study: StudyFiles) -> Prepared:
        return prepare_study(study, study_key(key, study.identity), encode, keep_paths=options.keep_paths,
                             keep_images=bool(fallbacks))

    b = options.batch_size
    batches = [studies[i : i + b] for i in range(0, len(studies), b)]
    summary = BatchSummary()
    start = time.perf_counter()
    bar = tqdm(total=len(studies), unit="study", file=progress, disable=progress is None, dynamic_ncols=True)

    def row(prep: Prepared, drafted: Drafted | None) -> dict[str, Any]:
        if drafted is None:
            return error_row(prep.key, prep.error or "not drafted")
        return draft_row(prep, drafted.result, model=drafted.model, model_revision=drafted.model_revision,
                         normalized=drafted.normalized, options=options, sampler=drafted.sampler,
                         replaced=drafted.replaced)

    def draft(good: list[Prepared]) -> list[Drafted]:
        """The batch's drafts; with a fallback, the studies whose draft fails the report check are drafted again,
        together, by each fallback sampler in turn."""
        results = generate_reports(ck, [p.prompt for p in good], sampler=options.sampler, config=options.config)
        summary.model_calls += max(r.model_calls for r in results)
        out = [Drafted.of(r, options.sampler, ck) for r in results]
        for name, checkpoint in fallbacks:
            redo = [i for i, d in enumerate(out) if d.check_warnings(options.lang)]
            if not redo:
                break
            again = generate_reports(checkpoint, [encode(good[i].images or [], checkpoint) for i in redo],
                                     sampler=name, config=options.config)
            summary.model_calls += max(r.model_calls for r in again)
            summary.redrafted += len(redo)
            for i, r in zip(redo, again):
                out[i] = Drafted.of(r, name, checkpoint, [*out[i].replaced, out[i].attempt(options.lang)])
        for p in good:
            p.images = None  # the views are not needed once the batch is drafted
        return out

    finisher = _Finisher(writer, row, bar=bar)
    try:
        for ready, load_seconds in prefetch(batches, prepare):
            summary.load_seconds += load_seconds
            good = [p for p in ready if p.error is None]
            results: list[Drafted] = []
            if good:
                t0 = time.perf_counter()
                results = draft(good)
                summary.draft_seconds += time.perf_counter() - t0
            by_key = {p.key: r for p, r in zip(good, results)}
            finisher.put([(p, by_key.get(p.key) if p.error is None else None) for p in ready])
            summary.drafted += len(good)
            summary.errors += len(ready) - len(good)
    finally:
        finisher.close()  # every drafted study is written, also on Ctrl-C
        bar.close()
        summary.seconds = time.perf_counter() - start
    return summary


# ------------------------------------------------------------------------------------------ the whole run
#: Exit status: every study drafted / some skipped or not drafted / usage error.
EXIT_OK, EXIT_SOME_SKIPPED, EXIT_USAGE = 0, 3, 2


def part_path(out: Path, rank: int) -> Path:
    """Where rank ``rank`` of a multi-process run writes its share before rank 0 merges it into ``out``."""
    return out.with_name(f"{out.name}.part{rank}")


def merge_parts(out: Path) -> int:
    """Append the whole lines of every part file of ``out`` whose study is not in ``out`` yet, then delete the
    parts (fsync-ed before deletion); returns the rows added. Safe to repeat after an interruption."""
    done = read_finished(out)
    added = 0
    with LineWriter(out) as writer:
        for part in sorted(out.parent.glob(f"{out.name}.part*")):
            read_finished(part)  # cut an unterminated last line
            for raw in part.read_text(encoding="utf-8").splitlines():
                if not raw.strip():
                    continue
                row = json.loads(raw)
                if row["id"] not in done:
                    writer.write(row)
                    done[row["id"]] = row.get("error") is not None
                    added += 1
            part.unlink()
    return added


def launch_state() -> Any:
    """accelerate's ``PartialState`` when this process was started by ``accelerate launch`` with several
    processes (``WORLD_SIZE`` > 1), else None. Without CUDA the processes join a gloo group on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def process_device(device: str | None) -> str | None:
    """The device this process drafts on: ``device`` when given, else its own GPU under ``accelerate launch``."""
    state = launch_state() if device is None else None
    return str(state.device) if state is not None else device


class _Ranks:
    """This process's place in an ``accelerate launch`` run (one process when not launched)."""

    def __init__(self) -> None:
        self.state = launch_state()

    @property
    def count(self) -> int:
        return self.state.num_processes if self.state is not None else 1

    @property
    def rank(self) -> int:
        return self.state.process_index if self.state is not None else 0

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def share(self, items: list) -> list:
        if self.state is None:
            return items
        with self.state.split_between_processes(items) as mine:
            return list(mine)


@dataclass
class RunReport:
    """The outcome of :func:`run_batch` as the command prints it."""

    status: int
    found: int = 0
    already_done: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    summary: BatchSummary = field(default_factory=BatchSummary)
    #: what the run changed of what was asked, in words (the command prints each as a ``note:`` line)
    notes: list[str] = field(default_factory=list)


def run_batch(
    inputs: Sequence[str],
    *,
    out: str | os.PathLike[str],
    options: BatchOptions,
    drafter: Any,
    resume: bool = False,
    one_per_file: bool = False,
    key_file: str | os.PathLike[str] | None = None,
    progress: IO[str] | None = None,
) -> RunReport:
    """Find, draft and write every study of ``inputs`` into ``out`` (see ``echo-report --batch``).

    Under ``accelerate launch`` the studies still to do are split between the processes
    (``PartialState.split_between_processes``); each writes ``OUT.partN`` and rank 0 merges the parts into ``out``.

    Raises:
        ValueError: a usage error (missing input, ``out`` exists without ``resume``, a resumed output without
            its key file); nothing was drafted.
    """
    from .device import shares_batches
    from .studies import discover_studies, load_or_create_key

    notes: list[str] = []
    quantize = getattr(drafter, "quantize", "none")
    if options.batch_size > 1 and not shares_batches(quantize):
        notes.append(f"--quantize {quantize}: the weights quantize each layer's input over the whole batch, so a "
                     f"study's draft would depend on the studies beside it; drafting one study at a time "
                     f"(--batch-size 1, not {options.batch_size})")
        options = replace(options, batch_size=1)
    out = Path(out)
    key_path = Path(key_file) if key_file is not None else out.with_name(out.name + ".key")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist")
    ranks = _Ranks()
    started = out.exists() or any(out.parent.glob(f"{out.name}.part*"))
    ranks.wait()  # every process has looked before rank 0 creates anything
    if started and not resume:
        raise ValueError(f"--out {out}: the file exists; add --resume to continue it, or choose another file")
    found = discover_studies(inputs, one_per_file=one_per_file)
    if not found.studies and not found.skipped:
        raise ValueError(f"{' '.join(inputs)}: no PNG, JPEG or DICOM files there")
    if ranks.rank == 0:
        load_or_create_key(key_path, create=not started)  # made once, here; every rank reads it below
        merge_parts(out)  # the shares of an interrupted multi-process run
        out.touch()
    ranks.wait()
    if progress is not None and ranks.rank == 0:
        for note in notes:
            print(f"note: {note}", file=progress, flush=True)
    key = load_or_create_key(key_path, create=False)
    done = read_finished(out, repair=False)
    keys = [study_key(key, s.identity) for s in found.studies]
    todo = [s for s, k in zip(found.studies, keys) if k not in done]
    mine = ranks.share(todo)
    target = out if ranks.count == 1 else part_path(out, ranks.rank)
    with LineWriter(target) as writer:
        summary = draft_studies(mine, key=key, writer=writer, drafter=drafter, options=options,
                                progress=progress if ranks.rank == 0 else None)
    ranks.wait()
    report = RunReport(status=EXIT_OK, found=len(found.studies), already_done=len(found.studies) - len(todo),
                       skipped=dict(found.skipped), summary=summary, notes=notes)
    if ranks.rank == 0:
        if ranks.count > 1:
            merge_parts(out)
        final = read_finished(out, repair=False)
        report.errors = sum(1 for k in keys if final.get(k, True))
        if report.errors or found.skipped_files:
            report.status = EXIT_SOME_SKIPPED
    ranks.wait()
    return report
