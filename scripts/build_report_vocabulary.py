"""Build ``echo_model/data/report_vocabulary.txt``: the words of the training reports (report check).

    python scripts/build_report_vocabulary.py --iu DATA/iu_xray --covid DATA/covid_cxr_notes

The report check (:mod:`echo_model.report_check`) flags a word of 4+ letters that is neither in the English
dictionary (``pyspellchecker``) nor in this list. The list holds every lower-cased alphabetic word of 4+ letters
of the IU X-ray reports (findings, impression) and the covid_cxr_notes radiograph sentences, raw and
normalized, minus the de-identification mask (``xxxx``) and words with a letter 4+ times in a row. Single
words only, sorted, one per line: no sentence of the data sets is stored. Rare misspellings of the reports
("osseus") are in the list on purpose: a model trained on them may write them, and the check is there to
catch garbled output, not to proofread the training data.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from echo_model.data.covid_notes import radiograph_sentences
from echo_model.data.normalize import REGIONS, normalize_sections

OUT = Path(__file__).resolve().parents[1] / "echo_model" / "data" / "report_vocabulary.txt"
WORD = re.compile(r"[A-Za-z]{4,}")


def words(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text) if not re.search(r"([a-z])\1{3}", w.lower())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iu", type=Path, required=True, help="the IU X-ray folder (reports.jsonl)")
    ap.add_argument("--covid", type=Path, required=True, help="the covid_cxr_notes folder (records.jsonl)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    sections: list[tuple[str, str]] = []
    for line in (args.iu / "reports.jsonl").open(encoding="utf-8"):
        if line.strip():
            row = json.loads(line)
            sections.append((row.get("findings") or "", row.get("impression") or ""))
    for line in (args.covid / "records.jsonl").open(encoding="utf-8"):
        if line.strip():
            note = radiograph_sentences(json.loads(line).get("clinical_notes") or "")
            sections.append((note.findings, note.impression))
    vocab: set[str] = set()
    for findings, impression in sections:
        vocab |= words(f"{findings} {impression}")
        vocab |= words(normalize_sections(findings, impression).text)
    for region in REGIONS:
        vocab |= words(region.normal)
    vocab.discard("xxxx")
    args.out.write_text("".join(f"{w}\n" for w in sorted(vocab)), encoding="utf-8")
    print(f"wrote {len(vocab)} words to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
