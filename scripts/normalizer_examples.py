"""Reports raw -> normalized, for reading the normalizer's output (method.md §3.5).

    python scripts/normalizer_examples.py                       # the hand-written examples of docs/data.md
    python scripts/normalizer_examples.py --data DATA/iu_xray   # the ten IU X-ray studies listed in docs/data.md
    python scripts/normalizer_examples.py --data DATA/iu_xray --ids CXR2 CXR61

The IU X-ray reports are CC BY-NC-ND (no redistribution of adapted material), so the repository shows the
normalizer on hand-written reports written after the same patterns and prints the real ones only locally.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from echo_model.data.normalize import normalize_sections

# Studies whose patterns the hand-written examples follow: masked words, a report with only an impression,
# abnormal clauses in several regions, devices, a comparison statement, a spine finding.
IU_IDS = ("CXR2", "CXR32", "CXR33", "CXR37", "CXR61", "CXR78", "CXR111", "CXR164", "CXR205", "CXR213")

HANDWRITTEN: tuple[tuple[str, str], ...] = (
    ("Mild cardiomegaly. Sternotomy wires XXXX. Prominent pulmonary arteries. Lungs clear.", "No acute findings."),
    ("Heart size normal. Slight blunting of the left costophrenic XXXX. Otherwise clear lungs.", "No acute disease."),
    ("Normal heart and mediastinum. Clear lungs. Right axillary surgical clips. Intact bones.", "No active disease."),
    ("Normal heart size. XXXX patchy opacity in the left lower lung. Lungs otherwise clear.", "Left basilar opacity."),
    ("", "2 cm calcified granuloma in the left upper lobe, likely old infection. Heart size is normal."),
    ("", "Normal heart size. Left lung clear. Minimal right basilar atelectasis."),
    ("", "Stable small right pleural effusion. Unchanged chronic interstitial changes."),
    ("The heart is normal in size. The lungs are clear without effusion or pneumothorax.", "No acute process."),
    ("", "Elevated left hemidiaphragm. Normal heart size. Clear lungs."),
    ("Clear lungs. No effusion or pneumothorax. Normal heart and mediastinum. Thoracic spine spondylosis.",
     "No acute cardiopulmonary abnormality."),
)


def _markdown(pairs: list[tuple[str, str, str]]) -> str:
    lines = []
    for n, (label, raw, normalized) in enumerate(pairs, start=1):
        lines += [f"{n}. {label}  ", f"   raw: {raw}  ", f"   normalized: {normalized}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="an IU X-ray folder (reports.jsonl): print its studies instead")
    ap.add_argument("--ids", nargs="+", default=list(IU_IDS), help="IU study ids (with --data)")
    args = ap.parse_args(argv)
    pairs: list[tuple[str, str, str]] = []
    if args.data is None:
        for findings, impression in HANDWRITTEN:
            raw = f"Findings: {findings} Impression: {impression}".replace("  ", " ")
            pairs.append(("hand-written", raw, normalize_sections(findings, impression).text))
    else:
        path = Path(args.data) / "reports.jsonl"
        if not path.is_file():
            print(f"normalizer_examples: error: no reports.jsonl in {args.data}", file=sys.stderr)
            return 2
        rows = {row["id"]: row for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())}
        missing = [i for i in args.ids if i not in rows]
        if missing:
            print(f"normalizer_examples: error: no such study ids in {path}: {missing}", file=sys.stderr)
            return 2
        for sid in args.ids:
            f, i = rows[sid]["findings"], rows[sid]["impression"]
            pairs.append((f"`{sid}`", f"Findings: {f} Impression: {i}", normalize_sections(f, i).text))
    print(_markdown(pairs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
