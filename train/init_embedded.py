"""Create the embedded b = 8 checkpoint family (AR, teacher, student) with freshly initialised weights.

Usage::

    python -m train.init_embedded --data DATA/iu_xray --data DATA/covid_cxr_notes --out runs/init
    python -m train.init_embedded --reports PATH/TO/reports.jsonl [--out assets/checkpoints/echo-b8]

The tokenizer is a byte-level BPE trained on the report text of the ``train`` split of every ``--data`` (in
the normalized form ECHO trains on, method.md §3.5) or of ``--reports`` (any JSONL whose rows carry
``findings`` / ``impression`` / ``indication``), plus the prompt instructions. The three roles share the
tokenizer and start from the same seeded weights, as the paper's stages do (each stage initialises from the
previous one); the trainers then overwrite them. Weights are stored in fp16 to keep ``assets/`` small and
are loaded back in fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from echo_model.checkpoint import build_tiny_checkpoint
from echo_model.modeling import TinyModelSize
from echo_model.spec import OFFICIAL_INSTRUCTIONS, EchoSpec
from echo_model.tokenization import train_report_tokenizer

ROLES = ("ar", "teacher", "student")


def _rows_text(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            for key in ("findings", "impression", "indication"):
                if row.get(key):
                    yield str(row[key])


def _with_prompts(text: Iterator[str]) -> Iterator[str]:
    yield from text
    for instruction in OFFICIAL_INSTRUCTIONS.values():
        yield from [instruction] * 50
    yield from ["Findings: Impression: Indication:"] * 200


def report_text(path: Path) -> Iterator[str]:
    """The tokenizer's training text from a report JSONL, plus the prompt instructions and headers."""
    return _with_prompts(_rows_text(path))


def dataset_text(paths: list[str]) -> Iterator[str]:
    """Findings, impression and indication of the ``train`` split of each data set, reports normalized."""
    from echo_model.data import load_dataset

    for path in paths:
        for record in load_dataset(path, split="train"):
            yield from (text for text in (record.findings, record.impression, record.indication) if text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--reports", type=Path, help="JSONL with findings/impression/indication fields")
    src.add_argument("--data", action="append", help="data set folder whose train split's normalized reports train the tokenizer (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("assets/checkpoints/echo-b8"))
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--block-length", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.reports is not None and not args.reports.is_file():
        ap.error(f"--reports {args.reports} does not exist")
    text = report_text(args.reports) if args.reports is not None else _with_prompts(dataset_text(args.data))
    tokenizer = train_report_tokenizer(text, vocab_size=args.vocab_size)
    for role in ROLES:
        spec = EchoSpec(block_length=args.block_length, role=role, languages=("en",), revision="init-random")
        ck = build_tiny_checkpoint(tokenizer, spec, size=TinyModelSize(), seed=args.seed, image_size=args.image_size)
        ck.model.model.to(torch.float16)
        ck.save_pretrained(args.out / role)
        n = sum(p.numel() for p in ck.model.model.parameters())
        print(f"{role}: {n / 1e6:.2f}M parameters -> {args.out / role}")


if __name__ == "__main__":
    main()
