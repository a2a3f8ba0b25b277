"""``echo-normalize``: normalize radiology reports (method.md §3.5) from text or JSONL.

Examples::

    echo "Findings: Heart is enlarged. Impression: Cardiomegaly." | echo-normalize
    echo-normalize reports.txt                 # one report per line (or per blank-line-separated block)
    echo-normalize --jsonl reports.jsonl       # {"findings": ..., "impression": ...} or {"report": ...} per line

Text input gives one normalized report per line. JSONL input gives JSONL: each input object plus
``findings``/``impression``/``report`` (normalized) and the normalizer's counts (``impression_derived``,
``masks_removed``, ...). Bad input exits with status 2 and a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from typing import TextIO

from .normalize import NormalizeConfig, normalize_report, normalize_sections

__all__ = ["main"]


class _InputError(ValueError):
    """Input the CLI cannot read; the message is printed as one line."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="echo-normalize", description="Normalize chest X-ray reports (the ECHO paper, §3.5).")
    ap.add_argument("input", nargs="?", default="-", help="text or JSONL file (default: stdin)")
    ap.add_argument("--jsonl", action="store_true", help="input is JSON Lines (default: guessed from a .jsonl name)")
    ap.add_argument("--unmentioned", choices=("normal", "omit"), default="normal",
                    help="unmentioned regions get their normal statement (default) or are left out")
    ap.add_argument("--drop-priors", action="store_true", help="remove comparisons with prior studies")
    ap.add_argument("--lang", choices=("en", "zh"), default="en", help="report language (default en)")
    ap.add_argument("-o", "--output", default="-", help="output file (default: stdout)")
    return ap


def _text_reports(stream: TextIO) -> Iterator[str]:
    """One report per non-empty line."""
    for line in stream:
        if line.strip():
            yield line.strip()


def _jsonl_rows(stream: TextIO) -> Iterator[tuple[int, dict]]:
    for n, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise _InputError(f"line {n}: invalid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise _InputError(f"line {n}: expected a JSON object, got {type(row).__name__}")
        yield n, row


def _normalize_row(n: int, row: dict, config: NormalizeConfig) -> dict:
    if "findings" in row or "impression" in row:
        findings, impression = row.get("findings") or "", row.get("impression") or ""
        if not isinstance(findings, str) or not isinstance(impression, str):
            raise _InputError(f"line {n}: 'findings' and 'impression' must be strings, got {findings!r}, {impression!r}")
        result = normalize_sections(findings, impression, config)
    elif isinstance(row.get("report"), str):
        result = normalize_report(row["report"], config)
    else:
        raise _InputError(f"line {n}: needs 'findings'/'impression' or a 'report' string, got keys {sorted(row)}")
    return {**row, **result.to_dict()}


def run(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    config = NormalizeConfig(unmentioned=args.unmentioned, drop_priors=args.drop_priors, language=args.lang)
    jsonl = args.jsonl or str(args.input).endswith(".jsonl")
    try:
        stream = stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    except OSError as err:
        raise _InputError(f"cannot read {args.input!r}: {err.strerror}") from None
    lines: list[str] = []
    try:
        if jsonl:
            for n, row in _jsonl_rows(stream):
                lines.append(json.dumps(_normalize_row(n, row, config), ensure_ascii=False))
        else:
            lines = [normalize_report(text, config).text for text in _text_reports(stream)]
    except UnicodeDecodeError:
        raise _InputError(f"{args.input!r} is not UTF-8 text") from None
    finally:
        if stream is not stdin:
            stream.close()
    out = stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        out.write("".join(line + "\n" for line in lines))
    finally:
        if out is not stdout:
            out.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0, or 2 for bad input)."""
    args = _parser().parse_args(argv)
    try:
        run(args, sys.stdin, sys.stdout)
    except _InputError as err:
        print(f"echo-normalize: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
