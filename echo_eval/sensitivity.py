"""Image sensitivity: does the model look at the radiograph?

A report generator can score well on text metrics while ignoring the image (normal templates are common).
Two checks expose that, each on studies that have images:

(a) **Likelihood.** The reference report's negative log-likelihood (mean nats per scored token) given the
    study's own images, and given the images of a shuffled partner study. The partner's views are resized to
    the study's own view sizes, so both prompts have the same tokens and only the pixels differ; the
    partners are a seeded derangement (nobody is their own partner). The per-study difference
    ``NLL(own) - NLL(partner)`` is averaged, with a paired-bootstrap interval. A model that uses the image
    explains its own study's report better: the difference is negative. A model that ignores the image gives
    exactly 0.

    The NLL follows the sampler family:

    * ``ar``: causal next-token NLL of the response (report + ``<eos>``) under the causal mask.
    * ``teacher`` / ``echo`` / ``vanilla`` (block diffusion): the masked-diffusion NLL in the RAD training
      layout (``echo_model.layouts``, method.md §3.3) with a fixed masking: by default **every** response token is
      masked (t = 1 in every block), each noisy block seeing the context and the *clean* previous blocks.
      This is deterministic (no noise to average over), it is the conditional the one-step ECHO sampler
      decodes from (a fully masked block after committed ones), and it is the t = 1 term of the block
      diffusion ELBO. ``mask_ratio < 1`` masks a seeded random subset instead (the same subset under both
      images). The response is block-padded with ``<eos>`` as in training; only the report tokens and the
      first ``<eos>`` are scored.

    **Scoring scope.** ``scope="all"`` scores every report token and the first ``<eos>`` (as above).
    Normalized references (``echo_model.data.normalize``) consist largely of *default* statements: the
    fixed normal sentence of each region the source did not mention, which no image can explain and which
    dilute the difference. ``scope="non-default"`` scores only the tokens of the sentences that are **not**
    a default statement (:func:`scope_tokens`); the ``Findings:`` / ``Impression:`` headers and the
    ``<eos>`` are not scored. A default statement is a sentence equal (after whitespace normalisation) to a
    sentence of a region's normal statement (``Region.normal``) or to one of its parts (``Region.parts``,
    written when the rest of the statement would contradict the source), or to the normalizer's default
    impression for normal studies, ``DEFAULT_IMPRESSION`` ("No acute cardiopulmonary abnormality.").
    Matching is by text only: a source that wrote one of these sentences verbatim counts as default too.
    A study without any non-default token is skipped in that scope (``skipped_no_statement``). The
    result carries both: the top-level figures are the all-token ones, ``non_default`` holds the others
    (same forward passes; the masking of ``mask_ratio < 1`` is shared unless it missed every
    non-default token, see :func:`response_mask`).

(b) **Generation.** Reports drafted from the true images, from a blank image (uniform mid-grey, 128, same
    size) and from the true images shifted by +1 and -1 grey level. Reported: the share of reports that
    change under the blank image, the share that stay identical under both ±1 shifts, and the share that do
    both. A model that ignores the image changes nothing under the blank (share 0); a healthy model changes
    under the blank but not under an invisible ±1 shift. ``distinct_reports``: the number of distinct drafts
    from the true images over the studies (and its share): a model that writes one template for every study
    has 1.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from echo_model.data.records import StudyRecord

from .evaluation import check_languages, load_study_input
from .metrics.bootstrap import WithInterval

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from echo_model.checkpoint import EchoCheckpoint
    from echo_model.processing import StudyPrompt
    from echo_model.sampling import SamplerConfig

    from .metrics.bootstrap import BootstrapResult

log = logging.getLogger(__name__)

NLL_METHODS: tuple[str, ...] = ("causal", "masked-diffusion")
#: Scoring scopes of the reference NLL (module docstring, "Scoring scope").
NLL_SCOPES: tuple[str, ...] = ("all", "non-default")
BLANK_LEVEL = 128


def nll_method(sampler: str) -> str:
    """The NLL that matches a sampler: ``causal`` for ``ar``, ``masked-diffusion`` for the block samplers."""
    from echo_model.sampling import sampler_spec

    return sampler_spec(sampler).scoring


# ------------------------------------------------------------------------------------------- images
def shuffled_partners(n: int, seed: int = 0) -> list[int]:
    """A seeded derangement of ``range(n)``: ``partner[i] != i`` for every i.

    A random order followed by a cyclic shift by one place, so every study gets another study's images.
    """
    import random

    if n < 2:
        raise ValueError(f"shuffled partners need at least 2 studies with images, got {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partner = [0] * n
    for pos, i in enumerate(order):
        partner[i] = order[(pos + 1) % n]
    return partner


def partner_images(own: Sequence[Image.Image], other: Sequence[Image.Image]) -> list[Image.Image]:
    """The partner's views in the study's own view sizes (view k <- partner view k mod m).

    Why resize: the image processor turns the image size into the number of image tokens, so equal sizes
    keep the two prompts token-for-token identical and the NLLs comparable position by position.
    """
    from PIL import Image

    if not own or not other:
        raise ValueError(f"both studies need images, got {len(own)} and {len(other)}")
    return [
        other[k % len(other)].convert("L").resize(im.size, Image.Resampling.BILINEAR)
        for k, im in enumerate(own)
    ]


def blank_images(images: Sequence[Image.Image], level: int = BLANK_LEVEL) -> list[Image.Image]:
    """Uniform grey images of the same sizes (no anatomy at all)."""
    from PIL import Image

    if not 0 <= level <= 255:
        raise ValueError(f"grey level must be in [0, 255], got {level}")
    return [Image.new("L", im.size, color=level) for im in images]


def shift_grey(images: Sequence[Image.Image], delta: int) -> list[Image.Image]:
    """The images with every pixel shifted by ``delta`` grey levels (clipped to 0..255)."""
    import numpy as np
    from PIL import Image

    out = []
    for im in images:
        arr = np.asarray(im.convert("L"), dtype=np.int16) + int(delta)
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L"))
    return out


# -------------------------------------------------------------------------------------------- scope
# A section header (English or Chinese) of the model's report format; it is never a statement.
_HEADER = re.compile(r"(?<![A-Za-z])(?ai:findings?|impressions?)[ \t\u3000]*[:：]|(?:所见|结论)[ \t\u3000]*[:：]")
# Sentence ends as the normalizer writes them (``normalize._output_sentences``).
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=\S)")


def _check_scope(scope: str) -> None:
    if scope not in NLL_SCOPES:
        raise ValueError(f"unknown NLL scope {scope!r}; available: {list(NLL_SCOPES)}")


def _squash(text: str) -> str:
    return " ".join(text.split())


@functools.cache
def default_statements() -> frozenset[str]:
    """The sentences the normalizer writes by default (whitespace-normalised): every sentence of each
    region's normal statement, each of its parts, and the default impression of a normal study."""
    from echo_model.data.normalize import DEFAULT_IMPRESSION, REGIONS

    out = {_squash(DEFAULT_IMPRESSION)}
    for region in REGIONS:
        out.update(_squash(s) for s in _SENTENCE_BREAK.split(region.normal) if s.strip())
        out.update(_squash(text) for text, _ in region.parts)
    return frozenset(out)


def statement_spans(report: str) -> list[tuple[int, int, bool]]:
    """``(start, end, is_default)`` character spans of the report's sentences, section headers left out.

    Sentences end at ``.``/``!``/``?`` followed by white space (as the normalizer writes them); spans
    carry no outer white space.
    """
    defaults = default_statements()
    bounds = [0]
    for match in _HEADER.finditer(report):
        bounds += [match.start(), match.end()]
    bounds.append(len(report))
    spans = []
    for lo, hi in zip(bounds[::2], bounds[1::2]):  # the text between headers
        start = lo
        for match in [*_SENTENCE_BREAK.finditer(report, lo, hi), None]:
            end = hi if match is None else match.start()
            piece = report[start:end]
            if piece.strip():
                a = start + len(piece) - len(piece.lstrip())
                b = end - (len(piece) - len(piece.rstrip()))
                spans.append((a, b, _squash(piece) in defaults))
            if match is not None:
                start = match.end()
    return spans


def scope_tokens(report: str, offsets: Sequence[tuple[int, int]], *, scope: str) -> list[bool]:
    """Which tokens of ``report`` are scored in ``scope``, given each token's ``(start, end)`` characters
    (the fast tokenizer's ``offset_mapping``).

    ``all``: every token. ``non-default``: the tokens that overlap a sentence that is not a default
    statement (:func:`default_statements`); header and between-sentence white-space tokens are not.
    """
    _check_scope(scope)
    if scope == "all":
        return [True] * len(offsets)
    keep = [(a, b) for a, b, is_default in statement_spans(report) if not is_default]
    return [any(start < b and end > a for a, b in keep) for start, end in offsets]


# ---------------------------------------------------------------------------------------------- NLL
@dataclass
class _Scored:
    """One study's sequence for the NLL forward: ids, M-RoPE ids, mask, and per scope the targets
    (-100 = not scored)."""

    ids: torch.Tensor
    positions: torch.Tensor
    allow: torch.Tensor
    targets: dict[str, torch.Tensor]
    prompt: StudyPrompt


def _response_ids(
    checkpoint: EchoCheckpoint, report: str, *, block_pad_from: int | None, scope: str = "all"
) -> tuple[list[int], list[bool]]:
    """Report ids + ``<eos>`` (block-padded with ``<eos>`` after a prompt of ``block_pad_from`` tokens).

    Returns the ids and, for the leading report tokens and the first ``<eos>`` (the scorable ones), whether
    each is scored in ``scope`` (``non-default``: :func:`scope_tokens`; the ``<eos>`` is not).
    """
    _check_scope(scope)
    proc = checkpoint.processor
    enc = proc.tokenizer(report, add_special_tokens=False, return_offsets_mapping=scope != "all")
    ids = list(enc["input_ids"]) + [proc.eos_token_id]
    if scope == "all":
        scored = [True] * len(ids)
    else:
        scored = [*scope_tokens(report, [tuple(o) for o in enc["offset_mapping"]], scope=scope), False]
    if block_pad_from is not None:
        ids += [proc.eos_token_id] * ((-(block_pad_from + len(ids))) % checkpoint.model.block_length)
    return ids, scored


def _build_scored(
    checkpoint: EchoCheckpoint,
    prompt: StudyPrompt,
    report: str,
    *,
    method: str,
    mask: torch.Tensor | None,
    scopes: Sequence[str] = ("all",),
) -> _Scored:
    import torch

    from echo_model.masks import block_causal_mask

    model, proc = checkpoint.model, checkpoint.processor
    P = prompt.length
    pad_from = P if method == "masked-diffusion" else None
    flags = {}
    for scope in scopes:
        response, flags[scope] = _response_ids(checkpoint, report, block_pad_from=pad_from, scope=scope)
    R = len(response)
    in_scope = {  # scope -> (R,) bool: response tokens scored in that scope
        scope: torch.tensor(f + [False] * (R - len(f)), dtype=torch.bool) for scope, f in flags.items()
    }
    positions = model.sequence_positions(prompt, proc.image_token_id, P + R)  # (3, P+R)
    clean = torch.cat([prompt.input_ids, torch.tensor(response, dtype=torch.long)])  # (P+R,)
    if method == "causal":
        targets = {}
        for scope, keep in in_scope.items():
            t = torch.full_like(clean, -100)
            t[P - 1 : P + R - 1] = clean[P:].masked_fill(~keep, -100)  # position j predicts token j+1
            targets[scope] = t
        return _Scored(clean, positions, block_causal_mask(P + R, 1), targets, prompt)
    from echo_model.layouts import assemble, build_layout

    masked = torch.ones(R, dtype=torch.bool) if mask is None else mask
    noisy = clean.clone()
    noisy[P:][masked] = proc.mask_token_id
    lay = build_layout(P, R, model.block_length, "rad")
    ids, pos = assemble(lay, clean, noisy, positions)  # (L,), (3, L)
    resp = lay.noisy_response()  # (L,)
    idx = (lay.source - P).clamp(min=0)  # response index of each position
    targets = {}
    for scope, keep in in_scope.items():
        t = torch.full_like(ids, -100)
        hit = resp & masked[idx] & keep[idx]
        t[hit] = clean[lay.source[hit]]
        targets[scope] = t
    return _Scored(ids, pos, lay.allow, targets, prompt)


def _nll_batch(checkpoint: EchoCheckpoint, items: Sequence[_Scored]) -> list[dict[str, tuple[float, int]]]:
    """One padded forward; per item and scope (mean NLL over its scored tokens, number of scored tokens);
    ``(nan, 0)`` where a scope has no token."""
    import torch
    import torch.nn.functional as F

    from echo_model.modeling import pad_sequences, prompt_images

    model, device = checkpoint.model, checkpoint.model.device
    batch = pad_sequences([it.ids for it in items], [it.positions for it in items], [it.allow for it in items],
                          pad_id=checkpoint.processor.pad_token_id)
    B, L = batch.input_ids.shape
    scopes = list(items[0].targets)
    scoped = {s: torch.full((B, L), -100, dtype=torch.long) for s in scopes}  # scope -> (B, L)
    for i, it in enumerate(items):
        for s in scopes:
            scoped[s][i, : len(it.ids)] = it.targets[s]
    targets = scoped[scopes[0]].clone()  # (B, L): every scope's target (a position's target is the same)
    for s in scopes[1:]:
        targets = torch.where(targets == -100, scoped[s], targets)
    pixels, grid = prompt_images([it.prompt for it in items])
    with torch.no_grad():
        logits = model.forward_padded(
            batch.to(device),
            pixel_values=pixels.to(device, model.dtype) if pixels is not None else None,
            image_grid_thw=grid.to(device) if grid is not None else None,
        )  # (B, L, V)
    ce = F.cross_entropy(
        logits.float().flatten(0, 1), targets.to(device).flatten(), ignore_index=-100, reduction="none"
    ).view(B, L)  # (B, L)
    out: list[dict[str, tuple[float, int]]] = [{} for _ in range(B)]
    for s in scopes:
        keep = scoped[s].to(device) != -100  # (B, L)
        counts = keep.sum(-1)  # (B,)
        for i in range(B):
            n = int(counts[i])
            out[i][s] = (float(ce[i][keep[i]].sum() / n) if n else math.nan, n)
    return out


def reference_nll(
    checkpoint: EchoCheckpoint,
    prompts: Sequence[StudyPrompt],
    reports: Sequence[str],
    *,
    method: str,
    batch_size: int = 4,
    mask_ratio: float = 1.0,
    seed: int = 0,
    masks: Sequence[torch.Tensor | None] | None = None,
    scope: str = "all",
) -> list[tuple[float, int]]:
    """Mean NLL (nats per scored token) of each report given its prompt, and the number of scored tokens.

    Args:
        method: ``causal`` or ``masked-diffusion`` (see the module docstring).
        mask_ratio: masked-diffusion only: share of response tokens masked (1 = all, deterministic).
        seed: seed of the masking when ``mask_ratio < 1`` (study i uses ``seed + i``).
        masks: explicit per-study response masks (overrides ``mask_ratio``; used to give two image conditions
            the very same masking).
        scope: ``all`` or ``non-default`` (module docstring, "Scoring scope"); a study with no token in the
            scope gets ``(nan, 0)``.
    """
    _check_scope(scope)
    if masks is None and method == "masked-diffusion":
        masks = [
            response_mask(checkpoint, p, r, mask_ratio=mask_ratio, seed=seed + i, scope=scope)
            for i, (p, r) in enumerate(zip(prompts, reports))
        ]
    scored = _scoped_nll(
        checkpoint, prompts, reports, method=method, batch_size=batch_size, masks=masks, scopes=(scope,)
    )
    return [s[scope] for s in scored]


def _scoped_nll(
    checkpoint: EchoCheckpoint,
    prompts: Sequence[StudyPrompt],
    reports: Sequence[str],
    *,
    method: str,
    batch_size: int,
    masks: Sequence[torch.Tensor | None] | None,
    scopes: Sequence[str],
) -> list[dict[str, tuple[float, int]]]:
    """:func:`reference_nll` for several scopes from the same forward passes (``masks=None``: all masked)."""
    if method not in NLL_METHODS:
        raise ValueError(f"unknown NLL method {method!r}; available: {list(NLL_METHODS)}")
    if len(prompts) != len(reports):
        raise ValueError(f"got {len(prompts)} prompts and {len(reports)} reports")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if masks is None:
        masks = [None] * len(prompts)
    items = [
        _build_scored(checkpoint, p, r, method=method, mask=m, scopes=scopes)
        for p, r, m in zip(prompts, reports, masks)
    ]
    out: list[dict[str, tuple[float, int]]] = []
    for start in range(0, len(items), batch_size):
        out.extend(_nll_batch(checkpoint, items[start : start + batch_size]))
    return out


def response_mask(
    checkpoint: EchoCheckpoint,
    prompt: StudyPrompt,
    report: str,
    *,
    mask_ratio: float = 1.0,
    seed: int = 0,
    scope: str = "all",
) -> torch.Tensor | None:
    """The masked-diffusion masking of one study's response (None = all masked), seeded.

    At least one token scored in ``scope`` is masked (when the scope has any) so that every study has an NLL.
    The random draw does not depend on the scope: the scopes' masks differ only where the draw missed every
    token of the narrower scope.
    """
    import torch

    if not 0 < mask_ratio <= 1:
        raise ValueError(f"mask_ratio must be in (0, 1], got {mask_ratio}")
    if mask_ratio == 1:
        return None
    response, flags = _response_ids(checkpoint, report, block_pad_from=prompt.length, scope=scope)
    candidates = [j for j, keep in enumerate(flags) if keep]
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(len(response), generator=gen) < mask_ratio
    if candidates and not mask[candidates].any():
        mask[candidates[int(torch.randint(len(candidates), (1,), generator=gen))]] = True
    return mask


# ------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class StudyNLL:
    """One study's reference NLL under its own and its partner's images (mean nats per scored token)."""

    id: str
    partner_id: str
    tokens: int
    nll_own: float
    nll_partner: float
    tokens_non_default: int = 0
    nll_own_non_default: float | None = None
    nll_partner_non_default: float | None = None

    @property
    def difference(self) -> float:
        """``nll_own - nll_partner``: negative when the own image explains the report better."""
        return self.nll_own - self.nll_partner

    @property
    def difference_non_default(self) -> float | None:
        """The difference on the tokens of non-default statements (None: the report has none)."""
        if self.nll_own_non_default is None or self.nll_partner_non_default is None:
            return None
        return self.nll_own_non_default - self.nll_partner_non_default


@dataclass(frozen=True)
class StudyChange:
    """Reports drafted from the true, blank, +1 and -1 grey-level images of one study."""

    id: str
    report: str
    blank: str
    brighter: str
    darker: str

    @property
    def changed_by_blank(self) -> bool:
        return self.blank != self.report

    @property
    def stable_under_shift(self) -> bool:
        return self.brighter == self.report and self.darker == self.report


@dataclass(kw_only=True)
class ScopeDifference:
    """The NLL difference own - partner in one scoring scope, over the studies with a token in it.

    Attributes:
        scope: the scoring scope (``non-default``).
        n: studies with at least one token in the scope; ``tokens``: their scored tokens in all.
        nll_own, nll_partner: mean over those studies (None when ``n == 0``).
        interval: paired-bootstrap interval of the mean difference (None when ``n == 0``).
        skipped_no_statement: studies without a token in the scope (a report of default statements only).
    """

    scope: str
    n: int
    tokens: int
    nll_own: float | None
    nll_partner: float | None
    interval: BootstrapResult | None
    skipped_no_statement: int

    def to_json(self) -> dict[str, Any]:
        boot = self.interval
        return {
            "scope": self.scope, "n": self.n, "tokens": self.tokens, "nll_own": self.nll_own,
            "nll_partner": self.nll_partner, "nll_difference": boot.delta if boot else None,
            "low": boot.low if boot else None, "high": boot.high if boot else None,
            "p_value": boot.p_value if boot else None, "skipped_no_statement": self.skipped_no_statement,
        }


@dataclass(kw_only=True)
class SensitivityResult(WithInterval):
    """Both checks over the studies with images.

    Attributes:
        nll_difference: mean of ``nll_own - nll_partner`` (0 for a model that ignores the image), with
            ``low``/``high`` its paired-bootstrap interval at level ``1 - alpha`` and ``p_value``.
        blank_change_share: share of studies whose report changes with a blank image.
        shift_stable_share: share whose report is identical under both ±1 grey-level shifts.
        blank_change_and_shift_stable_share: share with both properties.
        distinct_reports: number of distinct drafts from the true images; ``distinct_report_share``: that
            over the number of studies.
        skipped: studies without readable images (not part of either check).
        scope: scoring scope of the top-level NLL figures (``all``).
        non_default: the difference on the tokens of non-default statements only (module docstring).
    """

    sampler: str
    model: str
    method: str
    n: int
    studies: list[StudyNLL] = field(default_factory=list)
    nll_own: float
    nll_partner: float
    interval: BootstrapResult
    seed: int
    changes: list[StudyChange] = field(default_factory=list)
    mask_ratio: float
    blank_change_share: float | None = None
    shift_stable_share: float | None = None
    blank_change_and_shift_stable_share: float | None = None
    distinct_reports: int | None = None
    distinct_report_share: float | None = None
    skipped: int = 0
    scope: str = "all"
    non_default: ScopeDifference | None = None

    nll_difference = property(lambda self: self.interval.delta, doc="mean NLL own - partner")
    alpha = property(lambda self: self.interval.alpha, doc="1 - the interval's level")

    def to_json(self) -> dict[str, Any]:
        skip = ("studies", "changes", "interval", "non_default")
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        boot = self.interval
        data |= {"nll_difference": boot.delta, "low": boot.low, "high": boot.high, "p_value": boot.p_value,
                 "alpha": boot.alpha, "n_resamples": boot.n_resamples}
        data["non_default"] = self.non_default.to_json() if self.non_default else None
        data["studies"] = [
            dataclasses.asdict(s) | {"difference": s.difference, "difference_non_default": s.difference_non_default}
            for s in self.studies
        ]
        data["changes"] = [
            dataclasses.asdict(c)
            | {"changed_by_blank": c.changed_by_blank, "stable_under_shift": c.stable_under_shift}
            for c in self.changes
        ]
        return data

    def markdown(self) -> str:
        level = f"{100 * (1 - self.alpha):g} %"
        share = "all" if self.mask_ratio == 1 else f"{self.mask_ratio:g} of"
        method = (
            "causal next-token NLL"
            if self.method == "causal"
            else f"masked-diffusion NLL, RAD layout, {share} response tokens masked"
        )
        rows = [
            ("sampler / model", f"{self.sampler} / {self.model}"),
            ("NLL", method),
            ("studies with images", str(self.n)),
            ("studies skipped (no readable image)", str(self.skipped)),
            ("NLL own image (nats/token)", f"{self.nll_own:.4f}"),
            ("NLL partner image (nats/token)", f"{self.nll_partner:.4f}"),
            (
                f"NLL own - partner ({level} interval)",
                f"{self.nll_difference:+.4f} [{self.low:+.4f}, {self.high:+.4f}], p = {self.p_value:.3f}",
            ),
        ]
        nd = self.non_default
        if nd is not None:
            rows.append(
                (
                    "studies skipped for the non-default NLL (no non-default statement)",
                    str(nd.skipped_no_statement),
                )
            )
            if nd.interval is not None:
                b = nd.interval
                label = f"NLL own - partner, non-default statements only ({level} interval; {nd.n} studies)"
                rows.append((label, f"{b.delta:+.4f} [{b.low:+.4f}, {b.high:+.4f}], p = {b.p_value:.3f}"))
                rows.append(("non-default tokens scored (all studies)", str(nd.tokens)))
        if self.changes:
            k = len(self.changes)
            rows += [
                (
                    "reports changed by a blank image",
                    f"{sum(c.changed_by_blank for c in self.changes)}/{k} ({self.blank_change_share:.2f})",
                ),
                (
                    "reports unchanged under ±1 grey level",
                    f"{sum(c.stable_under_shift for c in self.changes)}/{k} ({self.shift_stable_share:.2f})",
                ),
                ("both", f"{self.blank_change_and_shift_stable_share:.2f}"),
                (
                    "distinct drafts from the true images",
                    f"{self.distinct_reports}/{k} ({self.distinct_report_share:.2f})",
                ),
            ]
        return "\n".join(["| check | value |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)])


# ------------------------------------------------------------------------------------------- driver
def image_sensitivity(
    records: Sequence[StudyRecord], checkpoint: EchoCheckpoint, *, sampler: str = "echo",
    config: SamplerConfig | None = None, generation: bool = True, mask_ratio: float = 1.0, n_resamples: int = 1000,
    alpha: float = 0.05, seed: int = 0, batch_size: int = 4, progress: bool = True,
) -> SensitivityResult:
    """Run both checks (module docstring) on the records that have readable images.

    Args:
        records: studies; those without readable images are skipped (counted in ``skipped``).
        checkpoint: the loaded checkpoint; ``sampler`` picks the NLL method and the decoder of check (b).
        config: decoding settings of check (b) (default: the official ones).
        batch_size: studies per forward / per decoding batch.
        seed: seed of the partner shuffle, of the bootstrap and of the masking when ``mask_ratio < 1``.
        generation: run check (b) as well (four decodings per study).
    """
    from tqdm.auto import tqdm

    from echo_model.drafting import generate_reports

    from .metrics import paired_bootstrap

    method = nll_method(sampler)
    check_languages(records, checkpoint.spec.languages)
    inputs = [
        s
        for s in (
            load_study_input(r)
            for r in tqdm(records, desc="loading images", unit="study", disable=not progress, leave=False)
        )
        if s.images
    ]
    skipped = len(records) - len(inputs)
    partners = shuffled_partners(len(inputs), seed)
    proc = checkpoint.processor

    def encode(s: Any, images: Sequence[Image.Image]) -> StudyPrompt:
        return proc.encode(list(images), indication=s.record.indication, lang=s.record.language)

    def runner(prompts: list[StudyPrompt]) -> list[Any]:
        return generate_reports(checkpoint, prompts, sampler=sampler, config=config)

    def both_scopes(
        prompts: list[StudyPrompt], reports: list[str], masks: dict[str, list[torch.Tensor | None]]
    ) -> list[dict[str, tuple[float, int]]]:
        """Both scopes from one forward where their masks agree (always at ``mask_ratio = 1``)."""
        out = _scoped_nll(
            checkpoint, prompts, reports, method=method, batch_size=batch_size, masks=masks["all"],
            scopes=NLL_SCOPES,
        )
        differ = [j for j, (a, b) in enumerate(zip(masks["all"], masks["non-default"])) if not _same_mask(a, b)]
        if differ:
            redo = _scoped_nll(
                checkpoint, [prompts[j] for j in differ], [reports[j] for j in differ], method=method,
                batch_size=batch_size, masks=[masks["non-default"][j] for j in differ], scopes=("non-default",),
            )
            for j, r in zip(differ, redo):
                out[j]["non-default"] = r["non-default"]
        return out

    studies: list[StudyNLL] = []
    changes: list[StudyChange] = []
    with tqdm(
        total=len(inputs), desc=f"image sensitivity ({sampler})", unit="study", disable=not progress
    ) as bar:
        for start in range(0, len(inputs), batch_size):
            chunk = list(range(start, min(start + batch_size, len(inputs))))
            own = [encode(inputs[i], inputs[i].images) for i in chunk]
            swapped = [
                encode(inputs[i], partner_images(inputs[i].images, inputs[partners[i]].images)) for i in chunk
            ]
            reports = [inputs[i].record.report for i in chunk]
            masks = {
                scope: [
                    response_mask(checkpoint, p, r, mask_ratio=mask_ratio, seed=seed + i, scope=scope)
                    if method == "masked-diffusion"
                    else None
                    for i, p, r in zip(chunk, own, reports)
                ]
                for scope in NLL_SCOPES
            }
            nll_own = both_scopes(own, reports, masks)
            nll_swap = both_scopes(swapped, reports, masks)
            for i, a, b in zip(chunk, nll_own, nll_swap):
                (a_all, n_tok), (a_nd, n_nd) = a["all"], a["non-default"]
                studies.append(
                    StudyNLL(
                        id=inputs[i].record.id,
                        partner_id=inputs[partners[i]].record.id,
                        tokens=n_tok,
                        nll_own=a_all,
                        nll_partner=b["all"][0],
                        tokens_non_default=n_nd,
                        nll_own_non_default=a_nd if n_nd else None,
                        nll_partner_non_default=b["non-default"][0] if n_nd else None,
                    )
                )
            if generation:
                true = runner(own)
                blank = runner([encode(inputs[i], blank_images(inputs[i].images)) for i in chunk])
                up = runner([encode(inputs[i], shift_grey(inputs[i].images, 1)) for i in chunk])
                down = runner([encode(inputs[i], shift_grey(inputs[i].images, -1)) for i in chunk])
                for i, t, bl, u, d in zip(chunk, true, blank, up, down):
                    changes.append(
                        StudyChange(
                            id=inputs[i].record.id,
                            report=t.text,
                            blank=bl.text,
                            brighter=u.text,
                            darker=d.text,
                        )
                    )
            bar.update(len(chunk))

    own_v, swap_v = [s.nll_own for s in studies], [s.nll_partner for s in studies]
    boot = paired_bootstrap(
        lambda v, _r: sum(v) / len(v),
        own_v,
        swap_v,
        list(range(len(studies))),
        n_resamples=n_resamples,
        seed=seed,
        alpha=alpha,
    )

    scoped = [s for s in studies if s.tokens_non_default]
    nd_own = [s.nll_own_non_default for s in scoped]
    nd_swap = [s.nll_partner_non_default for s in scoped]
    non_default = ScopeDifference(
        scope="non-default",
        n=len(scoped),
        tokens=sum(s.tokens_non_default for s in scoped),
        nll_own=sum(nd_own) / len(scoped) if scoped else None,
        nll_partner=sum(nd_swap) / len(scoped) if scoped else None,
        interval=paired_bootstrap(
            lambda v, _r: sum(v) / len(v), nd_own, nd_swap, list(range(len(scoped))),
            n_resamples=n_resamples, seed=seed, alpha=alpha,
        ) if scoped else None,
        skipped_no_statement=len(studies) - len(scoped),
    )

    def share(flags: Sequence[bool]) -> float | None:
        return sum(flags) / len(flags) if flags else None

    distinct = len({c.report for c in changes}) if changes else None

    return SensitivityResult(
        sampler=sampler,
        model=checkpoint.source,
        method=method,
        n=len(studies),
        nll_own=sum(own_v) / len(own_v),
        nll_partner=sum(swap_v) / len(swap_v),
        interval=boot,
        seed=seed,
        mask_ratio=mask_ratio,
        blank_change_share=share([c.changed_by_blank for c in changes]),
        shift_stable_share=share([c.stable_under_shift for c in changes]),
        blank_change_and_shift_stable_share=share(
            [c.changed_by_blank and c.stable_under_shift for c in changes]
        ),
        distinct_reports=distinct,
        distinct_report_share=distinct / len(changes) if changes else None,
        skipped=skipped,
        non_default=non_default,
        studies=studies,
        changes=changes,
    )


def _same_mask(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    import torch

    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


__all__ = [
    "BLANK_LEVEL",
    "NLL_METHODS",
    "NLL_SCOPES",
    "ScopeDifference",
    "SensitivityResult",
    "StudyChange",
    "StudyNLL",
    "blank_images",
    "default_statements",
    "image_sensitivity",
    "nll_method",
    "partner_images",
    "reference_nll",
    "response_mask",
    "scope_tokens",
    "shift_grey",
    "shuffled_partners",
    "statement_spans",
]
