"""``echo-train``: run Stage I (AR) -> II (RAD) -> III (DCD), or one stage alone.

Examples::

    # the whole recipe on IU X-ray (text + indication) and covid_cxr_notes (images)
    echo-train all --data DATA/iu_xray --data DATA/covid_cxr_notes --out runs/echo-b8
    # one stage, from a given checkpoint
    echo-train rad --data DATA/iu_xray --init runs/echo-b8/ar --out runs/rad-only --steps 500
    # multi-process (DDP, gloo on CPU)
    accelerate launch --num_processes 2 -m train.cli ar --data ... --out ...

Training studies are the ``train`` split of every ``--data``; studies that share an image with the ``val`` /
``test`` splits are removed first. Each stage writes a checkpoint folder (``<out>/<stage>``) with its loss
log (``loss.csv``, ``loss.png``) and the run writes ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from echo_model.loading import load_checkpoint

from .engine import TrainConfig


def _records(paths: list[str], split: str, limit: int | None):
    from train.data import load_dataset

    out = []
    for p in paths:
        out += load_dataset(p, split=split)
    return out[:limit] if limit else out


def training_records(paths: list[str], limit: int | None = None):
    """The train split of every data set, minus studies sharing an image with val/test."""
    from train.data import deduplicate, remove_overlap

    train, _ = deduplicate(_records(paths, "train", None))
    held_out = _records(paths, "val", None) + _records(paths, "test", None)
    train, report = remove_overlap(train, held_out, by_text=False)
    logging.info("training studies: %d (%s)", len(train), report)
    return train[:limit] if limit else train


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="echo-train", description="Train ECHO's three stages.")
    ap.add_argument("stage", choices=["ar", "rad", "dcd", "all"])
    ap.add_argument("--data", action="append", required=True, help="data set folder or record JSONL (repeatable)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--init", default=None, help="starting checkpoint (default: the embedded checkpoint of the stage's input role)")
    ap.add_argument("--steps", type=int, default=None, help="steps of a single stage")
    ap.add_argument("--ar-steps", type=int, default=1500)
    ap.add_argument("--rad-steps", type=int, default=1500)
    ap.add_argument("--dcd-steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rad-lr", type=float, default=5e-4)
    ap.add_argument("--dcd-lr", type=float, default=3e-4)
    ap.add_argument("--layout", choices=["rad", "full"], default="rad")
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--threshold", type=float, default=0.85)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N training studies")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--resume", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from .pipeline import train_ar, train_dcd, train_rad

    records = training_records(args.data, args.limit)
    if not records:
        raise SystemExit(f"echo-train: error: no training studies in {args.data}")
    args.out.mkdir(parents=True, exist_ok=True)

    def cfg(name: str, steps: int, lr: float) -> TrainConfig:
        return TrainConfig(out_dir=args.out / name, steps=args.steps or steps, batch_size=args.batch_size,
                           grad_accum=args.grad_accum, lr=lr, seed=args.seed, save_every=args.save_every,
                           resume=args.resume, warmup=min(100, (args.steps or steps) // 10 + 1))

    summary_path = args.out / "summary.json"
    summary: dict = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.update(studies=len(records), data=args.data)
    stages = ["ar", "rad", "dcd"] if args.stage == "all" else [args.stage]
    ck = None
    for stage in stages:
        t0 = time.perf_counter()
        if stage == "ar":
            ck = load_checkpoint(args.init, role="ar") if ck is None else ck
            rep = train_ar(ck, records, cfg("ar", args.ar_steps, args.lr))
        elif stage == "rad":
            ck = load_checkpoint(args.init, role="ar") if ck is None else ck
            rep = train_rad(ck, records, cfg("teacher", args.rad_steps, args.rad_lr), layout=args.layout)
        else:
            ck = load_checkpoint(args.init, role="teacher") if ck is None else ck
            ck, drep = train_dcd(ck, records, cfg("student", args.dcd_steps, args.dcd_lr), top_k=args.top_k,
                                 threshold=args.threshold)
            summary["trajectories"] = vars(drep.trajectories) | {"seconds": round(drep.trajectory_seconds, 1)}
            rep = drep.train
        summary[stage] = {"wall_seconds": round(time.perf_counter() - t0, 1), "steps": rep.steps,
                          "first_loss": rep.first_loss, "last_loss": rep.last_loss,
                          "tokens_per_step": rep.tokens_per_step, "seconds_per_step": rep.seconds_per_step}
        summary_path.write_text(json.dumps(summary, indent=2))
        logging.info("%s done: %s", stage, summary[stage])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
