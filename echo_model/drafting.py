"""Drafting service: studies in, reports out. The one place the CLI, the evaluator and the app go through.

It owns checkpoint loading (lazy, cached per (model, role)), input encoding and sampler choice, and returns
a :class:`Draft` with the report, its sections, the per-block trace and the cost figures.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .checkpoint import EchoCheckpoint
from .device import check_quantization, quantize_checkpoint
from .loading import load_checkpoint
from .processing import StudyPrompt
from .data.report_text import parse_report
from .report_check import check_report
from .sampling import (BlockEvent, GenerationResult, SamplerConfig, build_sampler, check_fallback, drain,
                       sampler_spec)


@dataclass
class Draft:
    """A drafted report and how it was produced."""

    report: str
    sampler: str
    model: str
    model_revision: str
    result: GenerationResult
    #: the text each committed block decoded to, in order (what the app shows block by block)
    block_texts: list[str] = field(default_factory=list)
    #: what the reader must know: input gating and report checks, in words
    warnings: list[str] = field(default_factory=list)
    #: the prompt and decoding settings the draft was made with (stored with it, re-used by a re-draft)
    settings: dict[str, Any] = field(default_factory=dict)
    #: the report check's part of :attr:`warnings` (what a fallback sampler is tried for; input warnings are not)
    check_warnings: list[str] = field(default_factory=list)
    #: drafts of other samplers this one replaced because they failed the report check, in the order tried
    #: (:meth:`attempt` of each: sampler, model, report, warnings, seconds); empty without a fallback
    replaced: list[dict[str, Any]] = field(default_factory=list)

    @property
    def findings(self) -> str:
        """The Findings section of :attr:`report` (:func:`parse_report`)."""
        return parse_report(self.report).findings

    @property
    def impression(self) -> str:
        """The Impression section of :attr:`report` (:func:`parse_report`)."""
        return parse_report(self.report).impression

    def to_json(self) -> dict[str, Any]:
        return {
            "report": self.report,
            "findings": self.findings,
            "impression": self.impression,
            "blocks": self.block_texts,
            "sampler": self.sampler,
            "model": self.model,
            "model_revision": self.model_revision,
            **self.result.figures.to_json(),
            "warnings": list(self.warnings),
            "settings": dict(self.settings),
            "replaced": [dict(r) for r in self.replaced],
        }

    def attempt(self) -> dict[str, Any]:
        """This draft as one entry of a later draft's :attr:`replaced`: what was written and why it failed."""
        return {"sampler": self.sampler, "model": self.model, "model_revision": self.model_revision,
                "report": self.report, "warnings": list(self.check_warnings),
                "seconds": round(self.result.seconds, 4), "tokens": self.result.tokens}



class Drafter:
    """Loads checkpoints on first use and drafts reports with any sampler.

    Args:
        model: None for the embedded family (each sampler gets its role's checkpoint), or one checkpoint
            (folder / hub id) used by every sampler.
        device: None = CUDA when available, else CPU.
        warm_up: draft one short report right after loading a checkpoint (:func:`warm_up`), so that the
            process pays its first-call costs once, at load, and not in the first reader's draft.
        quantize: ``none`` or ``int8`` (dynamic int8 weights, CPU only; :func:`~echo_model.device.quantize_checkpoint`),
            applied to every checkpoint at load; ``int8`` only while its quality gate passes
            (:func:`~echo_model.device.check_quantization`, which raises ValueError quoting the gate otherwise).
    """

    def __init__(self, model: str | None = None, *, device: str | None = None, warm_up: bool = True,
                 quantize: str = "none"):
        self.quantize = check_quantization(quantize)
        self.model = model
        self.device = device
        self.warm_up = warm_up
        self._cache: dict[tuple[str | None, str], EchoCheckpoint] = {}
        self._lock = threading.Lock()

    def checkpoint(self, sampler: str) -> EchoCheckpoint:
        role = sampler_spec(sampler).role
        embedded = self.model is None or self.model == "embedded"
        key = (self.model, role if embedded else "any")
        with self._lock:
            if key not in self._cache:
                checkpoint = quantize_checkpoint(load_checkpoint(self.model, role=role, device=self.device),
                                                 self.quantize)
                if self.warm_up:
                    warm_up(checkpoint, sampler)
                self._cache[key] = checkpoint
            return self._cache[key]

    def stream(
        self,
        images: Sequence[Image.Image],
        *,
        sampler: str = "echo",
        indication: str | None = None,
        lang: str = "en",
        config: SamplerConfig = SamplerConfig(),
        warnings: Sequence[str] = (),
        prefix: str | None = None,
    ) -> Generator[BlockEvent, None, Draft]:
        """Yield each committed block; the generator returns the :class:`Draft`.

        ``prefix`` ("re-draft from my edit") is report text the radiologist fixed: it is appended to the prompt
        as already-committed response tokens and the model writes the rest. Under the block-causal mask this is
        exactly the state the sampler would be in had it committed those tokens itself (their keys/values are
        computed the same way), so no special sampler path is needed. The returned report starts with it.
        """
        ck, prompt = self.prompt(images, sampler=sampler, indication=indication, lang=lang, prefix=prefix)
        runner = build_sampler(sampler, ck.model, ck.processor, config)
        results = yield from runner.stream(prompt)
        return self.finish(results[0], sampler=sampler, indication=indication, lang=lang, config=config,
                           warnings=warnings, prefix=prefix)

    def finish(
        self,
        result: GenerationResult,
        *,
        sampler: str,
        indication: str | None = None,
        lang: str = "en",
        config: SamplerConfig | None = None,
        warnings: Sequence[str] = (),
        prefix: str | None = None,
    ) -> Draft:
        """The :class:`Draft` of one sampler result: the kept prefix put back, the report checked, the settings
        recorded. :meth:`stream` ends with it; a caller that decodes several studies in one batch (the app's
        shared batches) calls it per row with that row's request."""
        ck = self.checkpoint(sampler)
        config = config if config is not None else SamplerConfig()
        prefix_text = (prefix or "").strip()
        if prefix_text:
            result.text = " ".join(f"{prefix_text} {result.text}".split())
        tok = ck.processor.tokenizer
        check = check_report(result.text, normalized=ck.spec.report_style == "normalized", language=lang)
        return Draft(
            report=result.text,
            sampler=sampler,
            model=ck.source,
            model_revision=ck.spec.revision,
            result=result,
            block_texts=[tok.decode(b, skip_special_tokens=True) for b in result.blocks],
            warnings=[*warnings, *check.warnings],
            check_warnings=list(check.warnings),
            settings={"indication": indication, "lang": lang, "block_length": ck.spec.block_length,
                      "max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                      "top_k": config.top_k, "top_p": config.top_p, "threshold": config.threshold,
                      "seed": config.seed, "prefix": prefix_text or None, "quantize": self.quantize},
        )

    def prompt(self, images: Sequence[Image.Image], *, sampler: str, indication: str | None = None, lang: str = "en",
               prefix: str | None = None) -> tuple[EchoCheckpoint, StudyPrompt]:
        """The checkpoint a sampler runs on and the prompt it decodes from (a re-draft's kept text appended)."""
        ck = self.checkpoint(sampler)
        prompt = ck.processor.encode(list(images), indication=indication, lang=lang)
        prefix_text = (prefix or "").strip()
        if prefix_text:
            ids = ck.processor.tokenizer(prefix_text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            prompt = StudyPrompt(torch.cat([prompt.input_ids, ids]), prompt.pixel_values, prompt.image_grid_thw)
        return ck, prompt

    def draft(self, images: Sequence[Image.Image], *, fallback: Sequence[str] = (), **kwargs: Any) -> Draft:
        """Draft a study (the arguments of :meth:`stream`) and return the finished :class:`Draft`.

        ``fallback``: samplers to re-draft with, in turn, while the draft fails the report check (e.g.
        ``("teacher", "ar")`` after the one-step ``echo``, whose parallel block decoding is what writes
        repeated words and unfinished sentences in a model too small for one step). The first draft that passes
        is returned, else the last one tried, with its warnings; :attr:`Draft.replaced` lists every draft it
        replaced, so nothing a model wrote is hidden. Input warnings never trigger a fallback.
        """
        order = check_fallback(kwargs.get("sampler", "echo"), fallback)
        draft = drain(self.stream(images, **kwargs))
        replaced: list[dict[str, Any]] = []
        for name in order:
            if not draft.check_warnings:
                break
            replaced.append(draft.attempt())
            draft = drain(self.stream(images, **{**kwargs, "sampler": name}))
        draft.replaced = replaced
        return draft


#: What a one-step draft of the embedded family is drafted again with, in turn, when it fails the report check and
#: no fallback is named. The embedded student is far too small for one step per block: on the covid_cxr_notes
#: test radiographs only 26 % of its drafts pass the check, against 85 % of the teacher's and 98 % of AR's.
EMBEDDED_FALLBACK: tuple[str, ...] = ("teacher", "ar")


def default_fallback(model: str | None, sampler: str) -> tuple[str, ...]:
    """The fallback samplers of a draft when none are named (``echo-report`` without ``--fallback``, the app
    without ``ECHO_FALLBACK``): :data:`EMBEDDED_FALLBACK` for a one-step sampler of the embedded family
    (``model`` None or ``"embedded"``), none otherwise. A real checkpoint's one-step student, or a sampler chosen
    by name, is drafted as asked.

    >>> default_fallback(None, "echo"), default_fallback("embedded", "teacher"), default_fallback("/ckpt", "echo")
    (('teacher', 'ar'), (), ())
    """
    if model not in (None, "embedded") or not sampler_spec(sampler).one_step:
        return ()
    return tuple(name for name in EMBEDDED_FALLBACK if name != sampler)


def generate_reports(checkpoint: EchoCheckpoint, prompts: Sequence[StudyPrompt], *, sampler: str,
                     config: SamplerConfig | None = None) -> list[GenerationResult]:
    """Draft a batch of encoded studies on one checkpoint (``echo-eval`` and ``echo-bench`` draft through this,
    the CLI and the app through :class:`Drafter`); one :class:`GenerationResult` per prompt, in order."""
    return build_sampler(sampler, checkpoint.model, checkpoint.processor, config).generate(list(prompts))


def warm_up(checkpoint: EchoCheckpoint, sampler: str) -> None:
    """Draft two blocks of one synthetic single-view study with ``sampler``, untimed and thrown away.

    Why: the first forward of each shape in a process allocates its buffers and builds its kernels (oneDNN
    primitives on a CPU, cuBLAS handles on a GPU); doing it at load keeps that cost out of the first draft
    the reader waits for (the prefill, the first block and one fused block: every shape a draft then uses).
    """
    from .imaging.synthetic import phantom_cxr

    prompt = checkpoint.processor.encode([phantom_cxr((224, 224))])
    config = SamplerConfig(max_new_tokens=2 * checkpoint.model.block_length, fixed_length=True)
    build_sampler(sampler, checkpoint.model, checkpoint.processor, config).generate(prompt)
