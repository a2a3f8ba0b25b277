""""Nothing lost": does a normalized report say everything its source said? (method.md §3.5)

Both texts are labelled with :func:`echo_model.labeler.label_report` and compared per CheXpert observation:

* **kept positive**: of the reports whose source is positive for an observation, the share whose
  normalized report is positive too (target >= 98 % for every observation with >= 10 positives);
* **kept uncertain**: the same for uncertain (target >= 98 %);
* **new positives**: reports where the source is negative for, or does not mention, an observation and
  the normalized report is positive (target 0);
* **conflicting defaults**: added normal statements that negate a positive or uncertain observation of
  the source, statement by statement (target 0).

``scripts/normalizer_recall.py`` runs this over the IU X-ray and covid_cxr_notes corpora; the tests run it
on a synthetic mini-corpus.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from echo_model.labeler import OBSERVATIONS, Label, label_report

from .normalize import NormalizeConfig, NormalizedReport, added_statement_conflicts, normalize_sections

__all__ = ["RecallResult", "measure_recall"]

MIN_SUPPORT = 10
TARGET = 0.98


@dataclass
class RecallResult:
    """Per-observation counts of one corpus (see the module docstring)."""

    reports: int = 0
    positive: dict[str, int] = field(default_factory=dict)
    kept_positive: dict[str, int] = field(default_factory=dict)
    uncertain: dict[str, int] = field(default_factory=dict)
    kept_uncertain: dict[str, int] = field(default_factory=dict)
    new_positive: dict[str, int] = field(default_factory=dict)
    conflicting_defaults: int = 0
    examples: list[str] = field(default_factory=list)

    def rate(self, kind: str, observation: str) -> float | None:
        total = (self.positive if kind == "positive" else self.uncertain).get(observation, 0)
        kept = (self.kept_positive if kind == "positive" else self.kept_uncertain).get(observation, 0)
        return kept / total if total else None

    def failures(self) -> list[str]:
        """What misses a target, in words (empty when every target holds)."""
        out = []
        for obs in OBSERVATIONS:
            for kind, totals in (("positive", self.positive), ("uncertain", self.uncertain)):
                rate = self.rate(kind, obs)
                if totals.get(obs, 0) >= MIN_SUPPORT and rate is not None and rate < TARGET:
                    out.append(f"{obs}: {rate:.1%} of {kind} reports stay {kind}")
            if self.new_positive.get(obs):
                out.append(f"{obs}: {self.new_positive[obs]} reports become positive")
        if self.conflicting_defaults:
            out.append(f"{self.conflicting_defaults} added normal statements negate a source finding")
        return out

    def to_dict(self) -> dict:
        rows = {}
        for obs in OBSERVATIONS:
            rows[obs] = {
                "positive": self.positive.get(obs, 0), "kept_positive": self.kept_positive.get(obs, 0),
                "uncertain": self.uncertain.get(obs, 0), "kept_uncertain": self.kept_uncertain.get(obs, 0),
                "new_positive": self.new_positive.get(obs, 0),
            }
        return {"reports": self.reports, "observations": rows, "conflicting_defaults": self.conflicting_defaults,
                "failures": self.failures()}

    def markdown(self, title: str) -> str:
        """The per-observation table (Markdown)."""
        lines = [f"**{title}** ({self.reports} reports)", "",
                 "| observation | positive | stay positive | uncertain | stay uncertain | new positives |",
                 "|---|---:|---:|---:|---:|---:|"]
        for obs in OBSERVATIONS:
            p, u = self.positive.get(obs, 0), self.uncertain.get(obs, 0)
            if not (p or u or self.new_positive.get(obs)):
                continue
            rp, ru = self.rate("positive", obs), self.rate("uncertain", obs)
            lines.append(
                f"| {obs} | {p} | {'-' if rp is None else f'{rp:.1%}'} | {u} | {'-' if ru is None else f'{ru:.1%}'}"
                f" | {self.new_positive.get(obs, 0)} |"
            )
        lines += ["", f"Added normal statements that negate a source finding: {self.conflicting_defaults}"]
        return "\n".join(lines)


def _inc(table: dict[str, int], key: str) -> None:
    table[key] = table.get(key, 0) + 1


def measure_recall(
    sources: Iterable[tuple[str, str]], config: NormalizeConfig | None = None, *, max_examples: int = 20
) -> RecallResult:
    """Normalize each ``(findings, impression)`` and compare the labels of source and result."""
    result = RecallResult()
    # a source label that must survive -> (reports with it, reports that keep it), per observation
    kept_counts = {Label.POSITIVE: (result.positive, result.kept_positive),
                   Label.UNCERTAIN: (result.uncertain, result.kept_uncertain)}
    for findings, impression in sources:
        normalized: NormalizedReport = normalize_sections(findings, impression, config)
        raw = label_report(f"{findings}\n{impression}")
        new = label_report(normalized.text)
        result.reports += 1
        lost = []
        for obs in OBSERVATIONS:
            if obs == "No Finding":
                continue
            before, after = raw.get(obs), new.get(obs)
            if before in kept_counts:
                seen, kept = kept_counts[before]
                _inc(seen, obs)
                if after is before:
                    _inc(kept, obs)
                else:
                    lost.append(f"{obs} {before.value}->{after}")
            elif after is Label.POSITIVE:
                _inc(result.new_positive, obs)
                lost.append(f"{obs} {before}->positive")
        conflicts = added_statement_conflicts(normalized, raw)
        result.conflicting_defaults += len(conflicts)
        if (lost or conflicts) and len(result.examples) < max_examples:
            result.examples.append(f"{lost} {conflicts} :: {findings} || {impression} => {normalized.text}")
    return result
