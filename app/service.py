"""The app's services: uploads in (de-identified, stored), drafts out (block by block), display helpers.

Why a service layer between the Gradio handlers and :mod:`echo_model`: the handlers must stay thin
callbacks (no model code, no SQL), the model must load lazily and once per process, and the
block-by-block stream needs a little bookkeeping (per-token text pieces, per-block timings, holding
the last block until the finished :class:`~echo_model.drafting.Draft` is known) that is easier to
test here than through a UI.

Nothing here imports torch or loads a model at import time; :class:`DraftingService` creates one
:class:`~echo_model.drafting.Drafter` per model on first use, and the Drafter caches checkpoints.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from echo_model.data.normalize import OTHER_REGION, split_regions
from echo_model.data.report_text import (
    findings_by_region,
    findings_from_region_text,
    format_report,
    parse_report,
)
from echo_model.imaging import (
    ImageInputError,
    LoadedImage,
    load_study,
    to_deidentified_original_png,
    to_deidentified_png,
)

from .admission import GenerationGate
from .batching import BatchKey, BatchRow, DraftBatcher
from .settings import EMBEDDED, AppSettings
from .store import NewImage, NotFoundError, Store, StudyInfo

if TYPE_CHECKING:  # torch/transformers load only when a model is first needed
    from echo_model.drafting import Draft, Drafter
    from echo_model.sampling import SamplerConfig

__all__ = [
    "CONFIDENCE_BANDS", "FALLBACK_SAMPLER", "BlockStep", "DraftingService", "ModelInfo", "PieceDecoder", "Services",
    "TokenPiece", "app_version", "confidence_band", "editor_findings", "ingest_uploads", "load_study_images",
    "offers_teacher_redraft", "redraft_prefix", "report_language", "split_report",
]

log = logging.getLogger(__name__)

#: Lower bounds of the confidence bands used to colour tokens, highest first.
CONFIDENCE_BANDS: tuple[tuple[str, float], ...] = (("high", 0.9), ("medium", 0.6), ("low", 0.0))
#: Placeholder shown for each not-yet-committed position of the next block.
MASK_GLYPH = "\u2592"
#: DICOM View Position -> record view (echo_model.data.records.VIEWS).
_VIEW_POSITIONS = {"PA": "pa", "AP": "ap", "LL": "lateral", "RL": "lateral", "LAT": "lateral", "LATERAL": "lateral"}


def app_version() -> str:
    """The installed package version (``unknown`` when run from a source tree without installing)."""
    try:
        return importlib.metadata.version("echo-cxr")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def confidence_band(confidence: float) -> str:
    """``high`` / ``medium`` / ``low``: the colour class of a committed token."""
    for name, lower in CONFIDENCE_BANDS:
        if confidence >= lower:
            return name
    return CONFIDENCE_BANDS[-1][0]


# ---------------------------------------------------------------------------------------- uploads
def _view_of(loaded: LoadedImage) -> str:
    position = str(loaded.metadata.get("view_position") or "").upper()
    return _VIEW_POSITIONS.get(position, "unknown")


def _delete_upload(path: Path, cache_dir: Path) -> None:
    """Delete an upload and its now-empty per-upload folder, but only inside Gradio's upload cache.

    Why the guard: a handler called programmatically (tests, API misuse) must never delete a file
    it does not own.
    """
    try:
        resolved, root = path.resolve(), cache_dir.resolve()
    except OSError:
        return
    if root not in resolved.parents:
        return
    resolved.unlink(missing_ok=True)
    parent = resolved.parent
    if parent != root:
        try:
            parent.rmdir()
        except OSError:
            pass  # not empty: other files of the same upload batch


def _check_uploads_here(uploads: Sequence[Path]) -> None:
    """Refuse, in words, an upload this process does not have.

    Why: Gradio keeps uploads in the upload cache of the process that received them. Behind a load balancer
    without sticky sessions the upload can reach one app server (replica) and the event that uses it
    another, which then names a file it never had.
    """
    for upload in uploads:
        if not upload.is_file():
            raise FileNotFoundError(
                f"the uploaded file {upload.name!r} is not on this app server: the upload reached another server "
                "of this site (or was cleared from the upload cache). Reload the page and upload the views again; "
                "if it happens again, the load balancer must keep each browser on one server (sticky sessions)."
            )


def ingest_uploads(
    paths: Sequence[str | Path],
    *,
    store: Store,
    owner: str,
    upload_cache_dir: Path,
    study_id: str | None = None,
) -> tuple[StudyInfo, list[str]]:
    """Load uploaded views, store them as de-identified PNGs, delete the uploads; return (study, warnings).

    Views are named ``view N`` (never by file name, which often holds a patient name); an error still
    names the uploaded file so the user knows which one to fix. With ``study_id`` of a study that has no
    draft yet the views are appended to it, otherwise a new study is created.
    """
    uploads = [Path(p) for p in paths]
    try:
        if not uploads:
            raise ValueError("no image was uploaded: choose one or more PNG, JPEG or DICOM files")
        existing: StudyInfo | None = None
        if study_id:
            try:
                candidate: StudyInfo | None = store.get_study(study_id, owner)
            except NotFoundError:  # deleted meanwhile: start a new study
                candidate = None
            existing = candidate if candidate is not None and not candidate.draft_ids else None
        _check_uploads_here(uploads)
        start = len(existing.images) if existing else 0
        labels = [f"view {start + i + 1}" for i in range(len(uploads))]
        try:
            loaded = load_study([str(p) for p in uploads], names=labels)
        except ImageInputError as err:
            original = uploads[labels.index(err.name)].name if err.name in labels else err.name
            raise type(err)(original, err.problem) from None
    finally:
        for upload in uploads:
            _delete_upload(upload, upload_cache_dir)
    known = {img.content_hash: img.label for img in existing.images} if existing else {}
    images: list[NewImage] = []
    warnings: list[str] = []
    for label, view in zip(labels, loaded):
        notes = list(view.warnings)
        if view.content_hash in known:
            notes.append(f"this view is pixel-identical to {known[view.content_hash]!r} of the same study.")
        images.append(NewImage(
            content_hash=view.content_hash, png=to_deidentified_png(view), width=view.size[0], height=view.size[1],
            view=_view_of(view), label=label, metadata=dict(view.metadata), warnings=tuple(notes),
            cxr_likeness=view.cxr_likeness, original_png=to_deidentified_original_png(view),
        ))
        warnings.extend(f"{label}: {note}" for note in notes)
    study = store.add_images(existing.id, owner, images) if existing else store.create_study(owner, images)
    return study, warnings


# ---------------------------------------------------------------------------------------- streaming
@dataclass(frozen=True)
class TokenPiece:
    """Text of one token (or of several whose bytes only form a character together) and its confidence."""

    text: str
    confidence: float

    @property
    def band(self) -> str:
        return confidence_band(self.confidence)


class PieceDecoder:
    """Turns committed token ids into display pieces, one per token where possible.

    Why not ``decode([id])`` per token: with byte-level BPE a character may span several tokens, which
    decode alone to U+FFFD. Decoding the growing sequence and taking the new suffix keeps the text exact;
    tokens that end inside a character are held and merged into the next piece (their lowest confidence
    wins). Tokens from ``<eos>`` on, and past the ``limit`` (the generation budget: a last block may run
    beyond it), are dropped, as the report text drops them.
    """

    def __init__(self, decode: Callable[[list[int]], str], eos_token_id: int | None, *, limit: int | None = None):
        self._decode = decode
        self._eos = eos_token_id
        self._limit = limit
        self._ids: list[int] = []
        self._text = ""
        self._held: list[float] = []
        self.stopped = False

    def feed(self, token_ids: Sequence[int], confidences: Sequence[float]) -> list[TokenPiece]:
        pieces: list[TokenPiece] = []
        for token, conf in zip(token_ids, confidences):
            if self.stopped:
                break
            if token == self._eos or (self._limit is not None and len(self._ids) >= self._limit):
                self.stopped = True
                break
            self._ids.append(int(token))
            self._held.append(float(conf))
            text = self._decode(self._ids)
            if text.endswith("\ufffd"):
                continue  # inside a multi-byte character: wait for its last byte
            pieces.extend(self._emit(text))
        return pieces

    def flush(self) -> list[TokenPiece]:
        """Pieces still held at the end of the report (an unfinished character)."""
        return self._emit(self._decode(self._ids)) if self._held else []

    def _emit(self, text: str) -> list[TokenPiece]:
        piece = text.removeprefix(self._text)
        conf = min(self._held)
        self._text, self._held = text, []
        return [TokenPiece(piece, conf)] if piece else []


@dataclass
class BlockStep:
    """One committed block, as the UI shows it.

    Attributes:
        index: 0-based block index.
        pieces: this block's display pieces with confidences.
        block_text: this block's decoded text.
        report: the whole report so far (with the kept prefix of a re-draft).
        seconds: time since generation started (prefill included).
        block_ms: time this block took (the first includes the prefill: time to first block).
        block_length: b, positions per block (the placeholder width of the next block).
        model_revision: revision of the checkpoint writing the draft.
        token_ids / confidences: the raw commit.
        done: the last block.
        draft: the finished draft (only on the last step).
        batch: what the shared batch cost this draft (:class:`~app.batching.RowFigures` as JSON: ``encode_s``,
            ``queue_s``, ``batch_rows``); a draft run alone has ``batch_rows`` 1.
    """

    index: int
    pieces: list[TokenPiece]
    block_text: str
    report: str
    seconds: float
    block_ms: float
    block_length: int
    model_revision: str
    token_ids: list[int]
    confidences: list[float]
    done: bool = False
    draft: Draft | None = None
    steps: list[int] | None = None
    batch: dict[str, float | int] = field(default_factory=dict)

    def trace(self) -> dict[str, Any]:
        """The JSON stored per block in the draft row (``steps``: each token's commit step, for explanations)."""
        return {"block": self.index, "token_ids": self.token_ids, "confidences": [round(c, 5) for c in self.confidences],
                "steps": self.steps, "text": self.block_text, "seconds": round(self.seconds, 5),
                "ms": round(self.block_ms, 3)}


@dataclass(frozen=True)
class ModelInfo:
    """What the UI shows about a model before (or without) loading its weights."""

    label: str
    source: str
    revision: str
    languages: tuple[str, ...]
    block_length: int | None
    card: str | None


def report_language(lang: str) -> Literal["en", "zh"]:
    """The report-text template language of a draft language (Chinese or English)."""
    return "zh" if lang == "zh" else "en"


#: The sampler a warned one-step draft is offered a re-draft with (the Draft tab's "Re-draft with the teacher").
FALLBACK_SAMPLER = "teacher"


def offers_teacher_redraft(draft: Any) -> bool:
    """Whether the Draft tab offers to re-draft ``draft`` (an ``app.store.DraftInfo``) with
    :data:`FALLBACK_SAMPLER`: a one-step draft (``echo``, ``vanilla``) that has warnings and is neither edited nor
    signed. The one-step sampler commits a whole block at once, which is where repeated words and unfinished
    sentences come from in a small model; the multi-step teacher drafts the same study again, as a new draft (the
    warned one stays in History)."""
    from echo_model.sampling import sampler_spec

    try:
        one_step = sampler_spec(draft.sampler).one_step
    except ValueError:  # a sampler this release does not know
        return False
    return one_step and bool(draft.warnings) and not draft.versions and draft.signed_at is None


def editor_findings(findings: str) -> str:
    """A finished draft's findings as the Findings editor shows them: one line per region
    (:func:`~echo_model.data.report_text.findings_by_region`) when at least one sentence names a region.

    Findings that name none (a garbled draft, a Chinese report: the normalizer has no Chinese regions) are
    shown as written: a lone ``Other:`` label would add nothing. Only the model's draft goes through here;
    text the clinician saved is shown, stored and signed exactly as typed.
    """
    if set(split_regions(findings)) <= {OTHER_REGION}:
        return findings
    return findings_by_region(findings)


def redraft_prefix(findings: str, impression: str, *, draft_impression: str, lang: str = "en") -> str:
    """The text a re-draft keeps: up to the end of the last section the radiologist changed.

    If the impression is empty or still the drafted one, only the findings are kept and the model writes
    the rest (more findings and a new impression); if the radiologist rewrote the impression, the whole
    report is kept and the model may only continue it. Findings laid out by region lose their labels and
    line breaks first (:func:`~echo_model.data.report_text.findings_from_region_text`), so the model
    continues plain ``Findings: ... Impression: ...`` text, its own format.
    """
    plain = findings_from_region_text(findings)
    full = format_report(plain, impression, lang=report_language(lang))
    if not impression.strip() or impression.strip() == draft_impression.strip():
        cut = full.rfind("Impression:" if lang != "zh" else "结论：")
        return full[:cut].strip() if cut > 0 else full.strip()
    return full.strip()


class DraftingService:
    """Lazy, cached access to the drafting models, restricted to the models the operator configured.

    Args:
        settings: which models exist (``settings.models``) and the device.
        drafter_factory: builds a Drafter for a model (``None`` = the embedded family); tests swap it.
    """

    def __init__(self, settings: AppSettings, *, drafter_factory: Callable[[str | None], Drafter] | None = None):
        self.settings = settings
        self._factory = drafter_factory
        self._drafters: dict[str, Drafter] = {}
        self._lock = threading.Lock()
        #: Decodes concurrent drafts of the same model, sampler and settings in shared batches.
        self.batcher = DraftBatcher(workers=settings.generation_concurrency, max_batch=settings.max_batch,
                                    window_s=settings.batch_window_ms / 1000.0)

    # ------------------------------------------------------------------ models
    def check_model(self, label: str | None) -> str:
        """The model-menu label to use (``None``/empty = the default); refuses anything not configured."""
        label = (label or "").strip() or self.settings.default_model
        if label not in self.settings.models:
            raise ValueError(f"model {label!r} is not offered by this app; choose one of {list(self.settings.models)}")
        return label

    def fallback_for(self, label: str | None, sampler: str) -> tuple[str, ...]:
        """The samplers that draft a study again, in turn, when a ``sampler`` draft of model ``label`` fails the
        report check: ``ECHO_FALLBACK`` less the draft's own sampler, or, with it unset, the model's default
        (:func:`echo_model.drafting.default_fallback`: the teacher, then AR, for the embedded family's one-step
        drafts)."""
        from echo_model.drafting import default_fallback

        label = self.check_model(label)
        if self.settings.fallback is None:
            return default_fallback(label, sampler)
        return tuple(name for name in self.settings.fallback if name != sampler)

    def drafter(self, label: str | None = None) -> Drafter:
        label = self.check_model(label)
        with self._lock:
            if label not in self._drafters:
                source = None if label == EMBEDDED else label
                if self._factory is not None:
                    self._drafters[label] = self._factory(source)
                else:
                    from echo_model.drafting import Drafter

                    self._drafters[label] = Drafter(source, device=self.settings.device, quantize=self.settings.quantize)
            return self._drafters[label]

    def loaded_models(self) -> list[str]:
        """Model-menu labels whose Drafter this process has built (each loads on its first use)."""
        with self._lock:
            return sorted(self._drafters)

    def _local_folder(self, label: str) -> Path | None:
        """The model's folder if it is on this machine already (never downloads)."""
        from echo_model.loading import embedded_path

        if label == EMBEDDED:
            return embedded_path("student")
        path = Path(label).expanduser()
        if path.is_dir():
            return path
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(label, "config.json")
        except (ImportError, ValueError, OSError):  # no hub library, malformed id: treat as not cached
            return None
        return Path(cached).parent if isinstance(cached, str) else None

    def model_info(self, label: str | None = None) -> ModelInfo:
        """Source, revision, languages and model card from ``config.json``/``README.md`` (no weights loaded).

        A model not yet on disk gets the defaults of the official checkpoints (English and Chinese).
        """
        from echo_model.spec import read_spec

        label = self.check_model(label)
        folder = self._local_folder(label)
        config: dict[str, Any] = {}
        if folder is not None and (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        spec = read_spec(SimpleNamespace(**config))
        card = None
        if folder is not None and (folder / "README.md").is_file():
            card = (folder / "README.md").read_text(encoding="utf-8")
        return ModelInfo(label=label, source=str(folder) if folder else label, revision=spec.revision,
                         languages=spec.languages, block_length=spec.block_length if config else None, card=card)

    def limitation(self, label: str | None = None) -> str:
        """What a reader must know about the model's drafts, in words: for the embedded family its limitation
        and how to use a real checkpoint instead (``echo_model.loading``); ``""`` for a configured checkpoint."""
        if self.check_model(label) != EMBEDDED:
            return ""
        from echo_model.loading import EMBEDDED_LIMITATION, REAL_CHECKPOINT_HINT

        return f"{EMBEDDED_LIMITATION} {REAL_CHECKPOINT_HINT}"

    def supports_prefix(self, label: str | None = None) -> bool:
        """Whether the installed ``Drafter.stream`` can continue from a kept prefix (re-draft from edit)."""
        return "prefix" in inspect.signature(type(self.drafter(label)).stream).parameters

    # ------------------------------------------------------------------ drafting
    def stream(
        self,
        images: Sequence[Image.Image],
        *,
        model: str | None,
        sampler: str,
        language: str,
        config: SamplerConfig,
        indication: str | None = None,
        warnings: Sequence[str] = (),
        prefix: str | None = None,
    ) -> Iterator[BlockStep]:
        """Draft a report, yielding exactly one :class:`BlockStep` per committed block.

        The last step carries the finished :class:`Draft`: it is held back until the sampler's generator
        has returned, so that a UI can show the final block and the saved draft in one update.
        """
        drafter = self.drafter(model)
        checkpoint = drafter.checkpoint(sampler)
        if language not in checkpoint.spec.languages:
            raise ValueError(
                f"language {language!r} is not supported by model {self.check_model(model)!r}; "
                f"supported: {list(checkpoint.spec.languages)}"
            )
        kwargs: dict[str, Any] = {"sampler": sampler, "indication": indication or None, "lang": language,
                                  "config": config, "warnings": tuple(warnings)}
        kept = (prefix or "").strip()
        if kept:
            kwargs["prefix"] = kept
        batch: dict[str, float | int] = {"batch_rows": 1}
        row: BatchRow | None = None
        if self._shares_batches(drafter):
            events, row = self._shared(drafter, images, label=self.check_model(model), **kwargs)
        else:  # a drafter without per-row hooks (an older or stand-in one) decodes alone, in this thread
            events = drafter.stream(list(images), **kwargs)
        try:
            yield from self._steps(events, row, checkpoint=checkpoint, config=config, kept=kept, batch=batch)
        finally:
            if row is not None:
                row.cancel()  # stopped or disconnected: the batch goes on without this row (no effect once done)

    def _steps(self, events: Generator[Any, None, Draft], row: BatchRow | None, *, checkpoint: Any,
               config: SamplerConfig, kept: str, batch: dict[str, float | int]) -> Iterator[BlockStep]:
        """One :class:`BlockStep` per block event of ``events``, the last one with the finished draft."""
        figures = row.figures if row is not None else None
        processor = checkpoint.processor
        decoder = PieceDecoder(lambda ids: str(processor.tokenizer.decode(ids, skip_special_tokens=True)),
                               processor.eos_token_id, limit=config.max_new_tokens)
        block_length, revision = checkpoint.spec.block_length, checkpoint.spec.revision
        previous = 0.0
        while True:
            try:
                event = next(events)
            except StopIteration as stop:  # the sampler ended without flagging a last block
                draft = stop.value
                if figures is not None:
                    batch = figures.to_json()
                yield BlockStep(index=-1, pieces=decoder.flush(), block_text="", report=draft.report,
                                seconds=draft.result.seconds, block_ms=0.0, block_length=block_length,
                                model_revision=revision, token_ids=[], confidences=[], done=True, draft=draft,
                                batch=batch)
                return
            if figures is not None:
                batch = figures.to_json()
            pieces = decoder.feed(event.token_ids, event.confidences)
            step = BlockStep(
                index=event.block, pieces=pieces, block_text="".join(p.text for p in pieces),
                report=" ".join(f"{kept} {event.text}".split()) if kept else event.text,
                seconds=event.seconds, block_ms=(event.seconds - previous) * 1000.0, block_length=block_length,
                model_revision=revision, token_ids=list(event.token_ids), confidences=list(event.confidences), done=event.done,
                steps=list(event.steps) if event.steps is not None else None, batch=batch,
            )
            previous = event.seconds
            if event.done:
                from echo_model.sampling import drain

                step.pieces.extend(decoder.flush())
                step.draft = drain(events)
                step.report = step.draft.report
            yield step
            if event.done:
                return

    @staticmethod
    def _shares_batches(drafter: Any) -> bool:
        """Whether ``drafter`` has what a shared batch needs: encoding alone and a draft per row."""
        return callable(getattr(drafter, "prompt", None)) and callable(getattr(drafter, "finish", None))

    def _shared(self, drafter: Drafter, images: Sequence[Image.Image], *, label: str, sampler: str,
                config: SamplerConfig, **request: Any) -> tuple[Generator[Any, None, Draft], BatchRow]:
        """This draft's events from a shared batch (:mod:`app.batching`) and the figures the batch fills in.

        The images are encoded here, in the caller's thread, while a running batch keeps the device busy.
        """
        from echo_model.device import shares_batches
        from echo_model.sampling import build_sampler

        t0 = time.perf_counter()
        checkpoint, prompt = drafter.prompt(images, sampler=sampler, indication=request.get("indication"),
                                            lang=request["lang"], prefix=request.get("prefix"))
        encode_s = time.perf_counter() - t0

        def start(prompts: Sequence[Any]) -> Generator[Any, None, Any]:
            return build_sampler(sampler, checkpoint.model, checkpoint.processor, config).stream(list(prompts))

        key = BatchKey.of(model=label, sampler=sampler, config=config,
                          shares=shares_batches(getattr(drafter, "quantize", "none")))
        row = BatchRow(key=key, prompt=prompt, start=start)
        row.figures.encode_s = encode_s
        self.batcher.submit(row)

        def events() -> Generator[Any, None, Draft]:
            result = yield from row.events()
            return drafter.finish(result, sampler=sampler, config=config, **request)

        return events(), row

    def redraft_from(self, prefix_text: str, images: Sequence[Image.Image], **kwargs: Any) -> Iterator[BlockStep]:
        """Keep ``prefix_text`` (the radiologist's fixed text) and let the model write what follows."""
        if not prefix_text.strip():
            raise ValueError("nothing to keep: the edited report is empty")
        if not self.supports_prefix(kwargs.get("model")):
            raise NotImplementedError("re-draft from edit is not available with this model")
        return self.stream(images, prefix=prefix_text, **kwargs)


def load_study_images(study: StudyInfo) -> list[Image.Image]:
    """The stored de-identified views, as the model sees them."""
    images = []
    for info in study.images:
        with Image.open(info.path) as img:
            images.append(img.convert("L"))
    return images


# A run of the same section header, repeated with or without colons ("Impression Impression Impression:"),
# as a garbled draft writes it: one header. A lone header word without a colon is prose and stays.
_REPEATED_HEADER = re.compile(
    r"(?<![A-Za-z])(?P<word>(?i:findings?|impressions?))[ \t]*:?(?:[ \t]*(?i:findings?|impressions?)"
    r"(?![A-Za-z])[ \t]*:?)+"
)


def _one_header(match: re.Match[str]) -> str:
    words = re.findall(r"(?i:findings?|impressions?)", match.group(0))
    sections = {w.lower().rstrip("s") for w in words}
    if len(sections) != 1:  # "Findings Impression:": keep the last header, the one that opens the section
        return f"{words[-1].capitalize()}:"
    return "Impression:" if sections == {"impression"} else "Findings:"


def split_report(text: str) -> tuple[str, str]:
    """(findings, impression) of report text, for the editable boxes.

    Headers in any case are recognised (``FINDINGS:``, ``impression:``), and a header repeated in a row
    (``Impression Impression Impression:``) counts once, so no header word is left inside a section.
    """
    parsed = parse_report(_REPEATED_HEADER.sub(_one_header, text))
    return parsed.findings, parsed.impression


@dataclass
class Services:
    """What the handlers work with: settings, the model service, the store and the device's admission gate."""

    settings: AppSettings
    drafting: DraftingService
    store: Store
    extra: dict[str, Any] = field(default_factory=dict)
    #: One per app, shared by every event that drafts on the device (see app.admission).
    gate: GenerationGate = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.gate = GenerationGate(slots=settings.generation_concurrency, max_waiting=settings.queue_size,
                                   rows_per_slot=settings.max_batch)

    @classmethod
    def create(cls, settings: AppSettings, **kwargs: Any) -> Services:
        store = Store(settings.data_dir, single_connection=settings.single_connection, url=settings.database_url,
                      image_dir=settings.image_dir, pool_size=settings.db_pool_size,
                      max_overflow=settings.db_max_overflow)
        return cls(settings=settings, drafting=DraftingService(settings, **kwargs), store=store)

