"""Evaluate one checkpoint + sampler (or the majority-template baseline) over a set of studies.

Why a library module (and not only the ``echo-eval`` script): the numbers we publish must come from one code
path, whether they are produced from the command line, a notebook or a test. The pipeline is

1. :func:`predict_records` drafts a report for every study (batched, with a progress bar) and returns one
   :class:`StudyPrediction` per study, in the order of the records; :func:`majority_predictions` does the same
   for the baseline that predicts the most frequent training report for every study;
2. :func:`score_predictions` scores them with :func:`echo_eval.metrics.evaluate_reports` and adds the cost
   figures (tokens per forward, seconds, tokens);
3. :func:`compare_predictions` pairs two runs on their study ids and gives the difference of ROUGE-L,
   BLEU-4 and CE-F1 (5) with a paired-bootstrap interval.

Predictions are stored as JSON Lines (:func:`write_predictions` / :func:`read_predictions`) so that two runs
made at different times can be compared without re-generating.

Studies whose image files cannot be read are drafted text-only (their images are dropped and counted); the
indication always goes in the prompt, which for text-only studies is the only study-specific input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_model.data.records import StudyRecord

from .metrics import evaluate_reports, majority_template
from .metrics.bootstrap import WithInterval

if TYPE_CHECKING:  # heavy modules (torch, transformers) only when a model is actually run
    from PIL import Image

    from echo_model.checkpoint import EchoCheckpoint
    from echo_model.sampling import RunFigures, SamplerConfig

    from .metrics.bootstrap import BootstrapResult

log = logging.getLogger(__name__)

PREDICTION_FIELDS: tuple[str, ...] = (
    "id",
    "prediction",
    "reference",
    "sampler",
    "model",
    "tokens",
    "forward_passes",
    "tokens_per_forward",
    "seconds",
)
"""Keys every line of a predictions JSONL file has (``images`` and ``missing_images`` follow them)."""

COMPARE_METRICS: tuple[str, ...] = ("rougeL", "bleu4", "ce_f1_5")
"""Metrics :func:`compare_predictions` gives intervals for (the headline NLG, n-gram and clinical scores)."""

PREDICT_BATCH_SIZE = 1
"""Studies :func:`predict_records` decodes together unless told otherwise."""

MAJORITY_SAMPLER = "majority"
MAJORITY_MODEL = "majority-template"

BASELINES: dict[str, str] = {
    "majority": "the most frequent training report as written (raw)",
    "frequent-normalized": "the most frequent normalized training report",
    "normal-template": "a fixed normal report in the normalized form (every region normal)",
}
"""Baselines ``echo-eval --baseline`` scores exactly as a model run; every model is read against them."""


# ------------------------------------------------------------------------------------------ records
@dataclass
class StudyPrediction:
    """One study's drafted report, its reference and what drafting it cost.

    The cost fields are None for predictions that no model produced (the majority baseline), so that their
    means are not reported as zeros.

    Attributes:
        id: the study id (pairs runs in :func:`compare_predictions`).
        prediction: the drafted report.
        reference: the reference report (``StudyRecord.report``).
        sampler: ``ar``, ``teacher``, ``echo``, ``vanilla`` or ``majority``.
        model: the checkpoint (folder, hub id or ``embedded:ROLE``), or ``majority-template``.
        tokens: generated tokens kept in the report (up to and including ``<eos>``).
        forward_passes: denoising forwards (the paper's TPF denominator).
        tokens_per_forward: committed tokens per denoising forward.
        seconds: wall-clock seconds until this study's report was finished (with batches: since the batch
            started, so the means of batched runs are not per-study latencies).
        images: number of views given to the model.
        missing_images: views listed by the record that could not be read (the study went without them).
        raw_reference: the reference before normalization (``StudyRecord.raw_report``; method.md §3.5), or
            None when the reference was not normalized.
        warnings: the report check of the prediction as drafted (:func:`echo_model.report_check.check_report`;
            empty = well formed), or None for predictions read from files written before the check existed.
        replaced: with fallback samplers (``echo-eval --fallback``), the samplers whose drafts of this study failed
            the report check and were replaced, in order (``[]`` = the first draft passed); None without a
            fallback. The cost fields then count every attempt: forwards and seconds summed, tokens of the kept one.
    """

    id: str
    prediction: str
    reference: str
    sampler: str
    model: str
    tokens: int | None = None
    forward_passes: int | None = None
    tokens_per_forward: float | None = None
    seconds: float | None = None
    images: int = 0
    missing_images: int = 0
    raw_reference: str | None = None
    warnings: list[str] | None = None
    replaced: list[str] | None = None

    @staticmethod
    def cost_of(figures: RunFigures) -> dict[str, Any]:
        """The cost fields of a prediction, taken from the run's :class:`RunFigures`."""
        return {name: getattr(figures, name) for name in ("tokens", "forward_passes", "tokens_per_forward", "seconds")}

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.tokens_per_forward is not None:
            data["tokens_per_forward"] = round(self.tokens_per_forward, 4)
        if self.seconds is not None:
            data["seconds"] = round(self.seconds, 4)
        return data

    @classmethod
    def from_json(cls, data: Any, *, where: str = "") -> StudyPrediction:
        """Parse one JSONL line; a missing or mistyped field raises ValueError naming ``where`` and the field
        (a ValueError, not a TypeError: it is bad input data, reported like any other malformed file)."""
        prefix = f"{where}: " if where else ""
        if not isinstance(data, dict):
            raise ValueError(f"{prefix}expected a JSON object, got {type(data).__name__}")  # noqa: TRY004
        missing = [k for k in ("id", "prediction", "reference") if k not in data]
        if missing:
            raise ValueError(
                f"{prefix}missing field(s) {missing}; a predictions line needs {list(PREDICTION_FIELDS)}"
            )
        for key in ("id", "prediction", "reference"):
            if not isinstance(data[key], str):
                raise ValueError(f"{prefix}field {key!r} must be a string, got {data[key]!r}")  # noqa: TRY004
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(
            **{k: v for k, v in data.items() if k in known}
            | {
                "sampler": str(data.get("sampler", "")),
                "model": str(data.get("model", "")),
            }
        )


def write_predictions(predictions: Sequence[StudyPrediction], path: str | Path) -> int:
    """Write one JSON object per line (UTF-8); returns the number of lines."""
    with Path(path).open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in predictions)
    return len(predictions)


def read_predictions(path: str | Path) -> list[StudyPrediction]:
    """Read a predictions JSONL file written by :func:`write_predictions` (or by hand: id, prediction,
    reference are required). Errors name the file and line; duplicate ids are refused because pairing two
    runs by id would be ambiguous."""
    path = Path(path)
    out: list[StudyPrediction] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path.name}: line {n}"
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err.msg})") from None
            pred = StudyPrediction.from_json(data, where=where)
            if pred.id in seen:
                raise ValueError(f"{where}: duplicate study id {pred.id!r}")
            seen.add(pred.id)
            out.append(pred)
    if not out:
        raise ValueError(f"{path}: no predictions in the file")
    return out


# ------------------------------------------------------------------------------------------- inputs
@dataclass
class StudyInput:
    """A record with its views loaded (grey PIL images) and the views that could not be read."""

    record: StudyRecord
    images: list[Image.Image]
    missing: list[str] = field(default_factory=list)


def load_study_input(record: StudyRecord, *, perturbation: str | None = None) -> StudyInput:
    """Load a record's views; unreadable or missing files are dropped (logged), never raised.

    Why: one broken file in a shared set must not end an evaluation of hundreds of studies; the study is
    drafted from what is left (text-only with its indication when nothing is left) and the loss is counted.
    ``perturbation`` names an :data:`echo_model.augment.PERTURBATIONS` entry applied to every loaded view
    (robustness runs: ``echo-eval --perturb NAME``); None loads the views as they are.
    """
    from echo_model.augment import perturb
    from echo_model.imaging import ImageInputError, load_image

    check_perturbation(perturbation)
    images, missing = [], []
    for ref in record.images:
        try:
            image = load_image(Path(ref.path)).image
            images.append(image if perturbation is None else perturb(image, perturbation))
        except (OSError, ImageInputError) as err:
            missing.append(ref.path)
            log.warning(
                "study %s: image %s not used (%s); the study goes without it", record.id, ref.path, err
            )
    return StudyInput(record=record, images=images, missing=missing)


def check_perturbation(name: str | None) -> None:
    """Refuse a name that :data:`echo_model.augment.PERTURBATIONS` lacks (None means no perturbation)."""
    from echo_model.augment import PERTURBATIONS

    if name is not None and name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; choose one of {sorted(PERTURBATIONS)}")


def check_languages(records: Sequence[StudyRecord], languages: Sequence[str]) -> None:
    """Refuse, before any drafting, records in a language the checkpoint was not trained for."""
    bad = [r.id for r in records if r.language not in languages]
    if bad:
        raise ValueError(
            f"{len(bad)} studies are in a language the checkpoint does not support ({list(languages)}), "
            f"e.g. {bad[:5]}"
        )


# ----------------------------------------------------------------------------------------- drafting
def predict_records(
    records: Sequence[StudyRecord],
    checkpoint: EchoCheckpoint,
    *,
    sampler: str = "echo",
    config: SamplerConfig | None = None,
    batch_size: int = PREDICT_BATCH_SIZE,
    progress: bool = True,
    perturbation: str | None = None,
    fallbacks: Sequence[tuple[str, EchoCheckpoint]] = (),
) -> list[StudyPrediction]:
    """Draft a report for every record with one checkpoint and sampler; one prediction per record, in order.

    Args:
        records: the studies (their ``report`` is the reference).
        checkpoint: the loaded checkpoint (``Drafter.checkpoint(sampler)``).
        sampler: ``ar``, ``teacher``, ``echo`` or ``vanilla``.
        config: decoding settings (default: the official ones, 512 new tokens, greedy).
        batch_size: studies decoded together (batches reproduce single runs; larger is faster).
        progress: show a tqdm bar (stderr).
        perturbation: an :data:`echo_model.augment.PERTURBATIONS` name applied to every view before
            drafting (None: the views as loaded).
        fallbacks: ``(sampler, checkpoint)`` pairs that re-draft, in turn and batched, the studies whose draft
            fails the report check (``echo-report --fallback``); the prediction is the draft kept, with the
            replaced samplers in :attr:`StudyPrediction.replaced` and the cost of every attempt.
    """
    from tqdm.auto import tqdm

    from echo_model.drafting import generate_reports
    from echo_model.report_check import check_report

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not records:
        raise ValueError("no studies to evaluate")
    check_languages(records, checkpoint.spec.languages)
    check_perturbation(perturbation)
    normalized = checkpoint.spec.report_style == "normalized"
    out: list[StudyPrediction] = []
    with tqdm(total=len(records), desc=f"drafting ({sampler})", unit="study", disable=not progress) as bar:
        for start in range(0, len(records), batch_size):
            inputs = [
                load_study_input(r, perturbation=perturbation) for r in records[start : start + batch_size]
            ]
            def draft(ck: EchoCheckpoint, name: str, rows: list[int]) -> list[StudyPrediction]:
                prompts = [ck.processor.encode(inputs[i].images, indication=inputs[i].record.indication,
                                               lang=inputs[i].record.language) for i in rows]
                styled = ck.spec.report_style == "normalized"
                return [
                    StudyPrediction(
                        id=s.record.id,
                        prediction=res.text,
                        reference=s.record.report,
                        sampler=name,
                        model=ck.source,
                        **StudyPrediction.cost_of(res.figures),
                        images=len(s.images),
                        missing_images=len(s.missing),
                        raw_reference=s.record.raw_report,
                        warnings=check_report(res.text, normalized=styled, language=s.record.language).warnings,
                        replaced=[] if fallbacks else None,
                    )
                    for s, res in zip((inputs[i] for i in rows),
                                      generate_reports(ck, prompts, sampler=name, config=config))
                ]

            batch = draft(checkpoint, sampler, list(range(len(inputs))))
            for name, ck in fallbacks:
                redo = [i for i, p in enumerate(batch) if p.warnings]
                if not redo:
                    break
                for i, again in zip(redo, draft(ck, name, redo)):
                    batch[i] = _after_fallback(batch[i], again)
            out.extend(batch)
            bar.update(len(inputs))
    return out


def _after_fallback(first: StudyPrediction, again: StudyPrediction) -> StudyPrediction:
    """``again`` (a fallback's draft) as the study's prediction, costed with the attempt it replaced."""
    forwards = (first.forward_passes or 0) + (again.forward_passes or 0)
    return dataclasses.replace(
        again,
        forward_passes=forwards,
        tokens_per_forward=(again.tokens or 0) / forwards if forwards else None,
        seconds=(first.seconds or 0.0) + (again.seconds or 0.0),
        replaced=[*(first.replaced or []), first.sampler],
    )


def baseline_template(kind: str, train_records: Sequence[StudyRecord]) -> str:
    """The one report a baseline predicts for every study (:data:`BASELINES`).

    ``majority`` learns from the training reports as written (``raw_report`` where the adapter normalized),
    ``frequent-normalized`` from their normalized form, ``normal-template`` from nothing.
    """
    from echo_model.data.normalize import normalize_report, normalize_sections

    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; available: {list(BASELINES)}")
    if kind == "normal-template":
        return normalize_sections("", "").text
    if not train_records:
        raise ValueError(f"the {kind} baseline needs training reports, got none")
    if kind == "majority":
        return majority_template(r.raw_report or r.report for r in train_records)
    return majority_template(r.report if r.raw_report is not None else normalize_report(r.report).text
                             for r in train_records)


def baseline_predictions(
    records: Sequence[StudyRecord], train_records: Sequence[StudyRecord], *, kind: str = "majority"
) -> list[StudyPrediction]:
    """A baseline (:data:`BASELINES`): one fixed report predicted for every study.

    Why: many chest X-ray reports are word-for-word normal templates, so a constant answer already scores
    well on n-gram metrics; every model is read against these floors on the same studies.
    """
    from echo_model.report_check import check_report

    if not records:
        raise ValueError("no studies to evaluate")
    template = baseline_template(kind, train_records)
    warnings = check_report(template, normalized=kind != "majority").warnings
    model = MAJORITY_MODEL if kind == "majority" else f"{kind}-baseline"
    return [
        StudyPrediction(
            id=r.id,
            prediction=template,
            reference=r.report,
            sampler=kind,
            model=model,
            images=0,
            raw_reference=r.raw_report,
            warnings=list(warnings),
        )
        for r in records
    ]


def majority_predictions(
    records: Sequence[StudyRecord], train_records: Sequence[StudyRecord]
) -> list[StudyPrediction]:
    """The majority-template baseline (:func:`baseline_predictions` with ``kind="majority"``)."""
    return baseline_predictions(records, train_records, kind="majority")


# ------------------------------------------------------------------------------------------ scoring
def _mean(values: Sequence[float | int | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def score_predictions(
    predictions: Sequence[StudyPrediction], *, embeddings: bool = False
) -> dict[str, float]:
    """:func:`evaluate_reports` of the predictions plus the mean cost figures.

    Returns:
        ``n``, BLEU-1..4, ``rougeL``, ``cider``, the CE keys (``ce_f1_5``...), and — when a model produced the
        predictions — ``tokens_mean``, ``forward_passes_mean``, ``tokens_per_forward_mean``, ``seconds_mean``.
    """
    if not predictions:
        raise ValueError("score_predictions needs at least one prediction, got none")
    results = evaluate_reports(
        [p.prediction for p in predictions], [p.reference for p in predictions], embeddings=embeddings
    )
    for key in ("tokens", "forward_passes", "tokens_per_forward", "seconds"):
        mean = _mean([getattr(p, key) for p in predictions])
        if mean is not None:
            results[f"{key}_mean"] = mean
    checked = [p.warnings for p in predictions if p.warnings is not None]
    if checked:
        results["well_formed"] = sum(1 for w in checked if not w) / len(checked)
    fallback = [p.replaced for p in predictions if p.replaced is not None]
    if fallback:  # share of studies whose first draft failed the check and was drafted again
        results["redrafted"] = sum(1 for r in fallback if r) / len(fallback)
    return results


def score_raw_references(
    predictions: Sequence[StudyPrediction], *, embeddings: bool = False
) -> dict[str, float] | None:
    """The predictions scored against the references as written before normalization (method.md §3.5), or
    None when no reference was normalized (then :func:`score_predictions` already used the raw text)."""
    if all(p.raw_reference is None for p in predictions):
        return None
    return evaluate_reports([p.prediction for p in predictions],
                            [p.raw_reference if p.raw_reference is not None else p.reference for p in predictions],
                            embeddings=embeddings)


# --------------------------------------------------------------------------------------- comparison
def _bleu_stats(
    predictions: Sequence[str], references: Sequence[str]
) -> list[tuple[int, int, tuple[int, ...], tuple[int, ...]]]:
    """Per-study BLEU sufficient statistics, computed by coco-caption's own ``cook_*`` functions."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    from .metrics.nlg import tokenize_report

    stats = []
    for pred, ref in zip(predictions, references):
        cooked = cook_test(
            " ".join(tokenize_report(pred)), cook_refs([" ".join(tokenize_report(ref))]), eff="closest"
        )
        stats.append((cooked["testlen"], cooked["reflen"], tuple(cooked["guess"]), tuple(cooked["correct"])))
    return stats


def _bleu4_of(
    stats: Sequence[tuple[int, int, tuple[int, ...], tuple[int, ...]]], _refs: Sequence[Any] = ()
) -> float:
    """Corpus BLEU-4 from per-study statistics (the arithmetic of coco-caption's ``compute_score``)."""
    small, tiny = 1e-9, 1e-15
    testlen = sum(s[0] for s in stats)
    reflen = sum(s[1] for s in stats)
    bleu = 1.0
    for k in range(4):
        bleu *= (sum(s[3][k] for s in stats) + tiny) / (sum(s[2][k] for s in stats) + small)
    score = bleu ** (1.0 / 4)
    ratio = (testlen + tiny) / (reflen + small)
    return score * math.exp(1 - 1 / ratio) if ratio < 1 else score


def _rouge_stats(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-study ROUGE-L (coco-caption's scorer; the corpus score is their mean)."""
    from pycocoevalcap.rouge.rouge import Rouge

    from .metrics.nlg import tokenize_report

    scorer = Rouge()
    return [
        float(scorer.calc_score([" ".join(tokenize_report(p))], [" ".join(tokenize_report(r))]))
        for p, r in zip(predictions, references)
    ]


def _mean_of(values: Sequence[float], _refs: Sequence[Any] = ()) -> float:
    return sum(values) / len(values)


def _ce5_stats(predictions: Sequence[str], references: Sequence[str]) -> list[tuple[int, int, int]]:
    """Per-study (tp, fp, fn) pooled over the 5 competition observations (micro CE, positive = present)."""
    from .metrics.chexpert import COMPETITION_OBSERVATIONS, Label, label_reports

    def positive(labels: Mapping[str, Any], obs: str) -> bool:
        return labels.get(obs) in (Label.POSITIVE, Label.POSITIVE.value)

    stats = []
    for p, r in zip(label_reports(predictions), label_reports(references)):
        tp = fp = fn = 0
        for obs in COMPETITION_OBSERVATIONS:
            a, b = positive(p, obs), positive(r, obs)
            tp, fp, fn = tp + (a and b), fp + (a and not b), fn + (b and not a)
        stats.append((tp, fp, fn))
    return stats


def _ce_f1_of(stats: Sequence[tuple[int, int, int]], _refs: Sequence[Any] = ()) -> float:
    from .metrics.chexpert import PRF

    return PRF(tp=sum(s[0] for s in stats), fp=sum(s[1] for s in stats), fn=sum(s[2] for s in stats)).f1


# metric -> (per-study statistics, corpus score of a list of statistics). Per-study statistics make each
# bootstrap resample a sum instead of a re-tokenisation; the full-set values equal evaluate_reports'.
_PAIRED: dict[str, tuple[Callable[[Sequence[str], Sequence[str]], list[Any]], Callable[..., float]]] = {
    "bleu4": (_bleu_stats, _bleu4_of),
    "rougeL": (_rouge_stats, _mean_of),
    "ce_f1_5": (_ce5_stats, _ce_f1_of),
}


@dataclass(frozen=True)
class MetricComparison(WithInterval):
    """``a - b`` of one metric on the paired studies, with its paired-bootstrap interval."""

    metric: str
    a: float
    b: float
    interval: BootstrapResult

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "a": self.a, "b": self.b, "delta": self.delta, "low": self.low,
                "high": self.high, "p_value": self.p_value}


@dataclass
class Comparison:
    """Two runs compared on the same studies (run ``a`` minus run ``b``)."""

    a: str
    b: str
    n: int
    n_resamples: int
    alpha: float
    seed: int
    metrics: dict[str, MetricComparison]

    def to_json(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in ("a", "b", "n", "n_resamples", "alpha", "seed")},
            "metrics": {k: v.to_json() for k, v in self.metrics.items()},
        }

    def markdown(self) -> str:
        level = f"{100 * (1 - self.alpha):g} %"
        lines = [
            f"| metric | {self.a} | {self.b} | delta (a - b) | {level} interval | p |",
            "| --- | ---: | ---: | ---: | --- | ---: |",
        ]
        for m in self.metrics.values():
            lines.append(
                f"| {m.metric} | {m.a:.4f} | {m.b:.4f} | {m.delta:+.4f} | [{m.low:+.4f}, {m.high:+.4f}] "
                f"| {m.p_value:.3f} |"
            )
        return "\n".join(lines)


def pair_predictions(
    a: Sequence[StudyPrediction], b: Sequence[StudyPrediction]
) -> tuple[list[StudyPrediction], list[StudyPrediction]]:
    """Match run ``b`` to run ``a`` by study id (order of ``a``).

    Every id of ``a`` must be in ``b`` (``b`` may hold more, e.g. a full run compared with a ``--limit`` run)
    and the paired references must agree; otherwise the runs were not made on the same studies and the
    comparison would be meaningless, so a ValueError names the offending ids.
    """
    by_id = {p.id: p for p in b}
    missing = [p.id for p in a if p.id not in by_id]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(a)} studies are missing from the other run, e.g. {missing[:5]}"
        )
    paired = [by_id[p.id] for p in a]
    differ = [
        p.id for p, q in zip(a, paired) if " ".join(p.reference.split()) != " ".join(q.reference.split())
    ]
    if differ:
        raise ValueError(
            f"{len(differ)} studies have different references in the two runs, e.g. {differ[:5]}; "
            f"were they made on the same data?"
        )
    return list(a), paired


def compare_predictions(
    a: Sequence[StudyPrediction],
    b: Sequence[StudyPrediction],
    *,
    metrics: Sequence[str] = COMPARE_METRICS,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    names: tuple[str, str] = ("a", "b"),
) -> Comparison:
    """Paired-bootstrap comparison of two runs over the studies of ``a`` (see :func:`pair_predictions`).

    Why paired: resampling the same studies for both runs cancels study difficulty out of the difference,
    so small but consistent differences get tight intervals (``echo_eval.metrics.bootstrap``).
    """
    from .metrics import paired_bootstrap

    unknown = [m for m in metrics if m not in _PAIRED]
    if unknown:
        raise ValueError(f"no paired bootstrap for metric(s) {unknown}; available: {list(_PAIRED)}")
    pa, pb = pair_predictions(a, b)
    refs = [p.reference for p in pa]
    out: dict[str, MetricComparison] = {}
    for metric in metrics:
        stats_fn, corpus_fn = _PAIRED[metric]
        sa = stats_fn([p.prediction for p in pa], refs)
        sb = stats_fn([p.prediction for p in pb], refs)
        res = paired_bootstrap(
            corpus_fn, sa, sb, list(range(len(refs))), n_resamples=n_resamples, seed=seed, alpha=alpha
        )
        out[metric] = MetricComparison(
            metric=metric,
            a=corpus_fn(sa),
            b=corpus_fn(sb),
            interval=res,
        )
    return Comparison(
        a=names[0], b=names[1], n=len(pa), n_resamples=n_resamples, alpha=alpha, seed=seed, metrics=out
    )


# ------------------------------------------------------------------------------------------ one run
@dataclass
class EvaluationResult:
    """One evaluated run: its predictions, scores and the settings that produced them."""

    predictions: list[StudyPrediction]
    metrics: dict[str, float]
    run: dict[str, Any] = field(default_factory=dict)
    comparison: Comparison | None = None
    raw_metrics: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """Metrics at the top level (``n``, ``rougeL``, ``bleu4``, ``ce_f1_5``..., against the references as
        loaded: normalized by default), ``raw_reference`` (the same metrics against the references as written,
        when they were normalized), ``perturbation`` (the image perturbation of the run, or None), then ``run``
        and ``comparison``; the predictions go to their own file."""
        data: dict[str, Any] = dict(self.metrics)
        data["n"] = int(self.metrics["n"])
        if self.raw_metrics is not None:
            data["raw_reference"] = dict(self.raw_metrics)
        data["perturbation"] = self.run.get("perturbation")
        data["run"] = dict(self.run)
        if self.comparison is not None:
            data["comparison"] = self.comparison.to_json()
        return data


def evaluate_records(
    records: Sequence[StudyRecord], checkpoint: EchoCheckpoint, *, embeddings: bool = False, **drafting: Any
) -> EvaluationResult:
    """:func:`predict_records` then :func:`score_predictions`, with the run's settings recorded.

    ``drafting`` are :func:`predict_records`' keyword arguments (``sampler``, ``config``, ``batch_size``,
    ``progress``, ``perturbation``), passed on as given.
    """
    from echo_model.sampling import SamplerConfig

    preds = predict_records(records, checkpoint, **drafting)
    config = drafting.get("config") or SamplerConfig()
    run = {
        "sampler": drafting.get("sampler", preds[0].sampler),
        "fallback": [name for name, _ in drafting.get("fallbacks", ())],
        "model": checkpoint.source,
        "model_revision": checkpoint.spec.revision,
        "block_length": checkpoint.spec.block_length,
        "max_new_tokens": config.max_new_tokens,
        "batch_size": drafting.get("batch_size", PREDICT_BATCH_SIZE),
        "images_used": sum(p.images for p in preds),
        "images_missing": sum(p.missing_images for p in preds),
        "text_only_studies": sum(1 for p in preds if p.images == 0),
        "report_style": checkpoint.spec.report_style,
        "perturbation": drafting.get("perturbation"),
    }
    return EvaluationResult(
        predictions=preds, metrics=score_predictions(preds, embeddings=embeddings), run=run,
        raw_metrics=score_raw_references(preds, embeddings=embeddings),
    )


def evaluate_baseline(
    records: Sequence[StudyRecord], train_records: Sequence[StudyRecord], *, kind: str = "majority",
    embeddings: bool = False,
) -> EvaluationResult:
    """A baseline (:data:`BASELINES`) scored exactly as a model run is."""
    preds = baseline_predictions(records, train_records, kind=kind)
    run = {
        "sampler": preds[0].sampler,
        "model": preds[0].model,
        # A digest, not the text: result files get shared, and a template can be a verbatim training report.
        "template_sha256": hashlib.sha256(preds[0].prediction.encode("utf-8")).hexdigest(),
        "template_words": len(preds[0].prediction.split()),
        "train_studies": len(train_records),
    }
    return EvaluationResult(predictions=preds, metrics=score_predictions(preds, embeddings=embeddings),
                            run=run, raw_metrics=score_raw_references(preds, embeddings=embeddings))


def evaluate_majority(
    records: Sequence[StudyRecord], train_records: Sequence[StudyRecord], *, embeddings: bool = False
) -> EvaluationResult:
    """The majority-template baseline (:func:`evaluate_baseline` with ``kind="majority"``)."""
    return evaluate_baseline(records, train_records, kind="majority", embeddings=embeddings)


__all__ = [
    "BASELINES",
    "COMPARE_METRICS",
    "PREDICTION_FIELDS",
    "Comparison",
    "EvaluationResult",
    "MetricComparison",
    "StudyInput",
    "StudyPrediction",
    "baseline_predictions",
    "baseline_template",
    "check_languages",
    "check_perturbation",
    "compare_predictions",
    "evaluate_baseline",
    "evaluate_majority",
    "evaluate_records",
    "load_study_input",
    "majority_predictions",
    "pair_predictions",
    "predict_records",
    "read_predictions",
    "score_predictions",
    "score_raw_references",
    "write_predictions",
]
