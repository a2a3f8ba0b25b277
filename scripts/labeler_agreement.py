#!/usr/bin/env python
"""Agreement of ECHO's rule-based CheXpert labeler with the IU X-ray MeSH codes.

Why: the labeler (``echo_eval.metrics.chexpert``) drives the clinical-efficacy
scores, so its errors become metric noise. IU X-ray (Demner-Fushman et al., JAMIA
2016) ships, for every report, MeSH-style "major" findings coded by people who read
the report; mapped onto the CheXpert observations they are a weak but independent
reference for the labeler. The script prints, per observation, the precision /
recall / F1 of "labeler says positive" against "MeSH codes it", the micro F1 over
the observations the mapping covers, and the number of reports.

Usage::

    python scripts/labeler_agreement.py DATA_DIR [--split train|val|test|all]
        [--errors OBSERVATION] [--limit N]

``DATA_DIR`` holds ``reports.jsonl`` (fields ``findings``, ``impression``,
``mesh_major``, ``split``). Reports with no text, or coded only "No Indexing", are
skipped. ``--errors`` prints the false positives/negatives of one observation (for
local inspection only: the data is CC BY-NC-ND, never paste it into the project).
The data is read at run time; nothing from it is stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from echo_eval.metrics.chexpert import (
    COMPETITION_OBSERVATIONS,
    OBSERVATIONS,
    PRF,
    Label,
    binary_prf,
    label_report,
)

# MeSH major term (the heading before the first "/") -> CheXpert observation, with
# an optional qualifier that must (or must not) appear among the "/" parts.
# Terms that have no CheXpert observation (calcified granuloma, emphysema,
# hyperinflation, degenerative spine, tortuous aorta, blunted costophrenic angle, ...)
# are not mapped.
#   heading                     observation                 required any-of / forbidden qualifiers
MESH_MAP: tuple[tuple[str, str, frozenset[str], frozenset[str]], ...] = (
    ("normal", "No Finding", frozenset(), frozenset()),
    ("Mediastinum", "Enlarged Cardiomediastinum", frozenset({"prominent", "enlarged"}), frozenset({"lymph nodes"})),
    ("Cardiomegaly", "Cardiomegaly", frozenset(), frozenset()),
    ("Cardiac Shadow", "Cardiomegaly", frozenset({"enlarged"}), frozenset()),
    ("Nodule", "Lung Lesion", frozenset(), frozenset({"breast"})),
    ("Mass", "Lung Lesion", frozenset(), frozenset({"breast"})),
    ("Opacity", "Lung Opacity", frozenset(), frozenset()),
    ("Airspace Disease", "Lung Opacity", frozenset(), frozenset()),
    ("Infiltrate", "Lung Opacity", frozenset(), frozenset()),
    ("Density", "Lung Opacity", frozenset({"lung"}), frozenset()),
    ("Cicatrix", "Lung Opacity", frozenset({"lung"}), frozenset()),
    ("Markings", "Lung Opacity", frozenset({"interstitial"}), frozenset()),
    ("Pulmonary Edema", "Edema", frozenset(), frozenset()),
    ("Pulmonary Congestion", "Edema", frozenset(), frozenset()),
    ("Heart Failure", "Edema", frozenset(), frozenset()),
    ("Consolidation", "Consolidation", frozenset(), frozenset()),
    ("Pneumonia", "Pneumonia", frozenset(), frozenset()),
    ("Pulmonary Atelectasis", "Atelectasis", frozenset(), frozenset()),
    ("Pneumothorax", "Pneumothorax", frozenset(), frozenset()),
    ("Hydropneumothorax", "Pneumothorax", frozenset(), frozenset()),
    ("Pleural Effusion", "Pleural Effusion", frozenset(), frozenset()),
    ("Thickening", "Pleural Other", frozenset({"pleura"}), frozenset()),
    ("Cicatrix", "Pleural Other", frozenset({"pleura"}), frozenset()),
    ("Fractures, Bone", "Fracture", frozenset(), frozenset()),
    ("Catheters, Indwelling", "Support Devices", frozenset(), frozenset()),
    ("Implanted Medical Device", "Support Devices", frozenset(), frozenset()),
    ("Medical Device", "Support Devices", frozenset(), frozenset()),
    ("Surgical Instruments", "Support Devices", frozenset(), frozenset()),
    ("Tube, Inserted", "Support Devices", frozenset(), frozenset()),
    ("Stents", "Support Devices", frozenset(), frozenset()),
    ("Sutures", "Support Devices", frozenset(), frozenset()),
)
MAPPED_OBSERVATIONS: tuple[str, ...] = tuple(o for o in OBSERVATIONS if any(m[1] == o for m in MESH_MAP))
# CheXpert's own definition of "No Finding" (no observation other than Support
# Devices present), applied to the mapped MeSH codes: the fair reference for the
# labeler's No Finding, since MeSH "normal" is withheld for findings that have no
# CheXpert observation (calcified granuloma, degenerative spine, hyperinflation, ...).
NO_FINDING_RULE = "No Finding (CheXpert rule on MeSH)"


@dataclass(frozen=True)
class Study:
    """One IU X-ray report: its text and the observations its MeSH codes map to."""

    study_id: str
    text: str
    mesh: frozenset[str]


def mesh_observations(terms: Iterable[str]) -> frozenset[str]:
    """CheXpert observations named by a report's ``mesh_major`` terms (see MESH_MAP)."""
    found: set[str] = set()
    for term in terms:
        heading, *qualifiers = (part.strip() for part in term.split("/"))
        quals = set(qualifiers)
        for mesh_heading, observation, required, forbidden in MESH_MAP:
            if heading != mesh_heading or quals & forbidden:
                continue
            if required and not quals & required:
                continue
            found.add(observation)
    return frozenset(found)


def load_studies(data_dir: Path, *, split: str = "all") -> Iterator[Study]:
    """Reports with text and MeSH codes from ``data_dir/reports.jsonl``."""
    path = data_dir / "reports.jsonl"
    if not path.is_file():
        raise ValueError(f"no reports.jsonl in {str(data_dir)!r}")
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if split != "all" and row.get("split") != split:
                continue
            text = " ".join(part for part in (row.get("findings", ""), row.get("impression", "")) if part)
            terms = row.get("mesh_major") or []
            if not text.strip() or not terms or terms == ["No Indexing"]:
                continue
            yield Study(study_id=row["id"], text=text, mesh=mesh_observations(terms))


def agreement(
    studies: Sequence[Study], predicted: Sequence[frozenset[str]]
) -> dict[str, PRF]:
    """Per-observation counts of labeler-positive vs MeSH-positive (see NO_FINDING_RULE)."""
    per_obs = {
        obs: binary_prf((obs in p for p in predicted), (obs in s.mesh for s in studies))
        for obs in MAPPED_OBSERVATIONS
    }
    per_obs[NO_FINDING_RULE] = binary_prf(
        ("No Finding" in p for p in predicted),
        (not s.mesh - {"No Finding", "Support Devices"} for s in studies),
    )
    return per_obs


def _micro(per_obs: dict[str, PRF], observations: Iterable[str]) -> PRF:
    chosen = [per_obs[o] for o in observations]
    return PRF(tp=sum(c.tp for c in chosen), fp=sum(c.fp for c in chosen), fn=sum(c.fn for c in chosen))


def format_table(per_obs: dict[str, PRF], n_reports: int) -> str:
    """Markdown table of the agreement, plus micro F1 with each No Finding reference and without."""
    lines = [
        "| observation | MeSH+ | labeler+ | precision | recall | F1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for obs, c in per_obs.items():
        lines.append(
            f"| {obs} | {c.support} | {c.tp + c.fp} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} |"
        )
    findings = [o for o in per_obs if not o.startswith("No Finding")]
    for name, observations in (
        ("13 findings + No Finding by CheXpert rule", [*findings, NO_FINDING_RULE]),
        ("13 findings + No Finding = MeSH normal", [*findings, "No Finding"]),
        ("13 findings, without No Finding", findings),
        ("CheXpert competition 5", list(COMPETITION_OBSERVATIONS)),
    ):
        c = _micro(per_obs, observations)
        lines.append(
            f"| **micro, {name}** | {c.support} | {c.tp + c.fp} | {c.precision:.3f} | {c.recall:.3f} | "
            f"**{c.f1:.3f}** |"
        )
    lines.append(f"\nreports: {n_reports}")
    return "\n".join(lines)


def _print_errors(studies: Sequence[Study], predicted: Sequence[frozenset[str]], obs: str, limit: int) -> None:
    shown = 0
    for study, pred in zip(studies, predicted, strict=True):
        if (obs in pred) != (obs in study.mesh) and shown < limit:
            kind = "FP" if obs in pred else "FN"
            print(f"[{kind}] {study.study_id}: {study.text}\n")
            shown += 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="folder with the IU X-ray reports.jsonl")
    parser.add_argument("--split", default="all", choices=("all", "train", "val", "test"))
    parser.add_argument("--errors", metavar="OBSERVATION", help="print disagreements for one observation")
    parser.add_argument("--limit", type=int, default=30, help="how many disagreements --errors prints")
    args = parser.parse_args(argv)

    studies = list(load_studies(args.data_dir, split=args.split))
    predicted = [
        frozenset(o for o, label in label_report(s.text).items() if label is Label.POSITIVE) for s in studies
    ]
    if args.errors:
        if args.errors not in MAPPED_OBSERVATIONS:
            parser.error(f"--errors must be one of {MAPPED_OBSERVATIONS}, got {args.errors!r}")
        _print_errors(studies, predicted, args.errors, args.limit)
    print(format_table(agreement(studies, predicted), len(studies)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
