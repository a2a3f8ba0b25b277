"""Measure that report normalization loses nothing: IU X-ray and covid_cxr_notes.

    python scripts/normalizer_recall.py --iu DATA/iu_xray --covid DATA/covid_cxr_notes

* IU X-ray: all 3,955 reports (``findings`` + ``impression`` of ``reports.jsonl``; both may be empty).
* covid_cxr_notes: the radiograph sentences of each row's ``clinical_notes``, picked exactly as the
  training adapter picks them (:func:`echo_model.data.covid_notes.radiograph_sentences`: sentences that name a
  radiographic finding, anatomy or device and are not history, labs, treatment, CT or teaching text;
  conclusion-like ones form the impression). Every row is used, whatever its licence, because nothing of it
  is published; rows whose note has no radiograph sentence are skipped.

Prints a Markdown table per corpus and writes ``results/normalizer_recall.json``; exits 1 when a target
is missed (see :mod:`echo_model.data.normalize_recall`). Also counts report-check false alarms on the
normalized IU reports (:mod:`echo_model.report_check`) when that module is present.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from echo_model.data.covid_notes import radiograph_sentences
from echo_model.data.normalize import normalize_sections
from echo_model.data.normalize_recall import measure_recall


def iu_sections(folder: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (folder / "reports.jsonl").open(encoding="utf-8") if line.strip()]
    return [(r.get("findings") or "", r.get("impression") or "") for r in rows]


def covid_sections(folder: Path) -> list[tuple[str, str]]:
    out = []
    for line in (folder / "records.jsonl").open(encoding="utf-8"):
        if not line.strip():
            continue
        sections = radiograph_sentences(json.loads(line).get("clinical_notes") or "")
        if sections.findings or sections.impression:
            out.append((sections.findings, sections.impression))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iu", type=Path, required=True, help="the IU X-ray folder (reports.jsonl)")
    ap.add_argument("--covid", type=Path, required=True, help="the covid_cxr_notes folder (records.jsonl)")
    ap.add_argument("--out", type=Path, default=Path("results/normalizer_recall.json"))
    ap.add_argument("--examples", action="store_true", help="print the reports that lose a label")
    args = ap.parse_args(argv)

    corpora = {"IU X-ray": iu_sections(args.iu), "covid_cxr_notes (radiograph sentences)": covid_sections(args.covid)}
    summary: dict = {}
    failed = False
    for name, sections in corpora.items():
        result = measure_recall(sections)
        print(result.markdown(name), end="\n\n")
        if args.examples:
            print("\n".join(result.examples), end="\n\n")
        summary[name] = result.to_dict()
        failed |= bool(result.failures())

    try:
        from echo_model.report_check import check_report
    except ImportError:
        check_report = None
    if check_report is not None:
        alarms = 0
        messages: dict[str, int] = {}
        for findings, impression in corpora["IU X-ray"]:
            check = check_report(normalize_sections(findings, impression).text, normalized=True)
            alarms += bool(check.warnings)
            for w in check.warnings:
                messages[w] = messages.get(w, 0) + 1
        total = len(corpora["IU X-ray"])
        print(f"Report check on the {total} normalized IU X-ray reports: {alarms} false alarms")
        for w, n in sorted(messages.items(), key=lambda kv: -kv[1])[:20]:
            print(f"  {n:5d}  {w}")
        summary["report_check_false_alarms"] = {"reports": total, "with_warnings": alarms, "warnings": messages}
        failed |= alarms > 0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
