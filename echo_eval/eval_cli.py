"""``echo-eval``: score one checkpoint + sampler (or the majority baseline) on a set of studies.

Examples::

    echo-eval --data DATA/iu_xray --split test --limit 20 --sampler echo --predictions echo.jsonl
    echo-eval --data DATA/iu_xray --split test --baseline majority --train-split train --compare echo.jsonl
    echo-eval --data corrections.jsonl --split all --model Midea-AIRC/ECHO_block8 --json scores.json
    echo-eval --data DATA/covid_cxr_notes --split test --limit 10 --sensitivity

``--data`` is a shared set's folder (IU X-ray, covid_cxr_notes), a study-record JSONL or the app's correction
export (``echo_model.data.load_dataset`` picks the reader). Metrics are printed as a Markdown table (stdout),
progress goes to stderr. ``--compare`` pairs this run with another predictions file by study id and prints
the difference (this run minus the other) of ROUGE-L, BLEU-4 and CE-F1 (5) with 95 % paired-bootstrap
intervals. ``--perturb NAME`` applies one of ``echo_model.augment.PERTURBATIONS`` to every view before
drafting (a robustness run: ``--compare`` it with the clean run's predictions); the JSON records
``perturbation``. ``--sensitivity`` runs the image-sensitivity check instead of the evaluation
(``echo_eval.sensitivity``). Errors go to stderr with exit status 2 (bad input) or 1 (checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echo_model import __version__
from echo_model.augment import PERTURBATIONS
from echo_model.cli import sampler_list
from echo_model.sampling import SAMPLERS

from .evaluation import BASELINES

SPLITS = ("train", "val", "test", "all")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="echo-eval", description="Evaluate report drafting on a set of studies."
    )
    data = ap.add_argument_group("data")
    data.add_argument(
        "--data", required=True, help="data set folder, study-record JSONL or correction export"
    )
    data.add_argument("--split", default="test", choices=SPLITS, help="studies to evaluate (default: test)")
    data.add_argument("--images-dir", default=None, help="IU X-ray only: the folder holding the IU images")
    data.add_argument(
        "--limit", type=int, default=None, help="evaluate only the first N studies of the split"
    )
    data.add_argument(
        "--normalize", action=argparse.BooleanOptionalAction, default=True,
        help="score against normalized IU X-ray / covid_cxr_notes references (the ECHO paper, §3.5), and against the "
             "references as written in a second table (default); --no-normalize scores the raw text only",
    )
    model = ap.add_argument_group("model")
    model.add_argument(
        "--model", default=None, help="checkpoint folder or hub id (default: the embedded ones)"
    )
    model.add_argument("--sampler", default="echo", choices=SAMPLERS)
    model.add_argument(
        "--fallback",
        type=sampler_list,
        default=(),
        metavar="SAMPLER[,SAMPLER]",
        help="re-draft the studies whose draft fails the report check with these samplers in turn, as "
             "echo-report --fallback does; the metrics score the drafts kept (and report the share re-drafted)",
    )
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    model.add_argument("--batch-size", type=int, default=4, help="studies decoded together (default 4)")
    model.add_argument("--max-new-tokens", type=int, default=512, help="generation budget (default 512)")
    model.add_argument(
        "--perturb",
        default=None,
        choices=list(PERTURBATIONS),
        metavar="NAME",
        help="robustness run: apply this fixed image perturbation (echo_model.augment.PERTURBATIONS) to every "
             "view before drafting; one of " + ", ".join(PERTURBATIONS),
    )
    base = ap.add_argument_group("baseline")
    base.add_argument(
        "--baseline",
        default=None,
        choices=list(BASELINES),
        help="evaluate a baseline instead of a model: " + "; ".join(f"'{k}' predicts {v}" for k, v in BASELINES.items()),
    )
    base.add_argument("--train-split", default="train", choices=SPLITS, help="split the baseline learns from")
    base.add_argument("--train-data", default=None, help="where the training reports are (default: --data)")
    out = ap.add_argument_group("output")
    out.add_argument("--json", default=None, metavar="OUT", help="write metrics (and comparison) as JSON")
    out.add_argument("--predictions", default=None, metavar="OUT.jsonl", help="write per-study predictions")
    out.add_argument(
        "--compare",
        default=None,
        metavar="OTHER.jsonl",
        help="another run's predictions: paired bootstrap of this run minus that one",
    )
    out.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    out.add_argument(
        "--seed", type=int, default=0, help="seed of the bootstrap and of the sensitivity shuffle"
    )
    out.add_argument("--embeddings", action="store_true", help="add the MiniLM similarity (needs the extra)")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    sens = ap.add_argument_group("image sensitivity")
    sens.add_argument(
        "--sensitivity",
        action="store_true",
        help="run the image-sensitivity check (NLL own vs shuffled image, on all tokens and on the non-default "
        "statements only; blank / ±1 grey reports, distinct drafts)",
    )
    sens.add_argument(
        "--mask-ratio",
        type=float,
        default=1.0,
        help="block-diffusion NLL: share of response tokens masked (default 1 = all)",
    )
    sens.add_argument("--no-generation", action="store_true", help="sensitivity: only the NLL check")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return ap


def load_split(path: str, split: str, *, images_dir: str | None = None, limit: int | None = None,
               normalize: bool = True) -> list:
    """Records of one split (``all`` = every record), the first ``limit`` of them; an empty result is an error
    that says which splits the data does hold."""
    from collections import Counter

    from echo_model.data import read_dataset

    kwargs: dict[str, Any] = {"images_dir": images_dir} if images_dir else {}
    loaded = read_dataset(path, normalize=normalize, **kwargs)
    records = loaded.records
    for reason, count in sorted(loaded.report.skipped.items()):
        if "error row" in reason:  # studies an echo-report --batch run could not draft
            print(f"echo-eval: {path}: {count} {'study' if count == 1 else 'studies'} not drafted (error row) "
                  "skipped", file=sys.stderr)
    chosen = records if split == "all" else [r for r in records if r.split == split]
    if not chosen:
        present = dict(Counter(r.split for r in records))
        raise ValueError(
            f"no studies with split {split!r} in {path} (splits there: {present}); "
            f"pick one of them or 'all'"
        )
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        chosen = chosen[:limit]
    return chosen


def _write_json(path: str, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def run_evaluation(args: argparse.Namespace) -> int:
    from .evaluation import (
        compare_predictions,
        evaluate_baseline,
        evaluate_records,
        read_predictions,
        write_predictions,
    )
    from .metrics import metrics_markdown

    records = load_split(args.data, args.split, images_dir=args.images_dir, limit=args.limit,
                         normalize=args.normalize)
    other = read_predictions(args.compare) if args.compare else None  # fail on a bad file before drafting
    if args.fallback:
        from echo_model.sampling import check_fallback

        check_fallback(args.sampler, args.fallback)
    if args.baseline is not None:
        if args.fallback:
            raise ValueError(f"--fallback {','.join(args.fallback)} re-drafts a model's drafts; --baseline "
                             f"{args.baseline} drafts nothing")
        # reports only: no images needed
        if args.perturb is not None:
            raise ValueError(
                f"--perturb {args.perturb} perturbs images; --baseline {args.baseline} uses none"
            )
        train = load_split(args.train_data or args.data, args.train_split, normalize=args.normalize)
        result = evaluate_baseline(records, train, kind=args.baseline, embeddings=args.embeddings)
    else:
        from echo_model.drafting import Drafter
        from echo_model.sampling import SamplerConfig

        config = SamplerConfig(max_new_tokens=args.max_new_tokens)
        drafter = Drafter(args.model, device=args.device)
        checkpoint = drafter.checkpoint(args.sampler)
        fallbacks = [(name, drafter.checkpoint(name)) for name in args.fallback]
        result = evaluate_records(
            records,
            checkpoint,
            sampler=args.sampler,
            config=config,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            embeddings=args.embeddings,
            perturbation=args.perturb,
            fallbacks=fallbacks,
        )
    result.run.update(data=args.data, split=args.split, limit=args.limit, normalized_references=args.normalize)
    name = f"{result.run['sampler']} ({result.run['model']})"
    if other is not None:
        other_name = f"{other[0].sampler} ({other[0].model})" if other[0].sampler else Path(args.compare).name
        result.comparison = compare_predictions(
            result.predictions, other, n_resamples=args.n_resamples, seed=args.seed, names=(name, other_name)
        )
    if args.predictions:
        write_predictions(result.predictions, args.predictions)
    if args.json:
        _write_json(args.json, result.to_json())
    kind = "normalized references" if result.raw_metrics is not None else "references"
    print(f"## {name} on {args.data} [{args.split}], {int(result.metrics['n'])} studies, {kind}\n")
    print(metrics_markdown(result.metrics))
    if result.raw_metrics is not None:
        print("\n## the same drafts against the references as written (raw)\n")
        print(metrics_markdown(result.raw_metrics))
    if result.comparison is not None:
        print(
            f"\n## paired bootstrap over {result.comparison.n} studies "
            f"({result.comparison.n_resamples} resamples)\n"
        )
        print(result.comparison.markdown())
    return 0


def run_sensitivity(args: argparse.Namespace) -> int:
    from echo_model.drafting import Drafter
    from echo_model.sampling import SamplerConfig

    from .sensitivity import image_sensitivity

    if args.baseline or args.compare or args.perturb or args.fallback:
        raise ValueError("--sensitivity checks a model; it does not take --baseline, --compare, --perturb or "
                         "--fallback")
    records = load_split(args.data, args.split, images_dir=args.images_dir, limit=args.limit,
                         normalize=args.normalize)
    checkpoint = Drafter(args.model, device=args.device).checkpoint(args.sampler)
    result = image_sensitivity(
        records,
        checkpoint,
        sampler=args.sampler,
        config=SamplerConfig(max_new_tokens=args.max_new_tokens),
        batch_size=args.batch_size,
        seed=args.seed,
        mask_ratio=args.mask_ratio,
        n_resamples=args.n_resamples,
        generation=not args.no_generation,
        progress=not args.no_progress,
    )
    if args.json:
        _write_json(
            args.json, {"data": args.data, "split": args.split, "limit": args.limit} | result.to_json()
        )
    print(f"## image sensitivity on {args.data} [{args.split}]\n")
    print(result.markdown())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Heavy imports happen inside the runners, after argument parsing, so --help is instant.
    from echo_model.loading import CheckpointError

    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        return run_sensitivity(args) if args.sensitivity else run_evaluation(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"echo-eval: error: {err}", file=sys.stderr)
        return 2
    except CheckpointError as err:
        print(f"echo-eval: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
