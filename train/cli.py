"""``echo-train``: run Stage I (AR) -> II (RAD) -> III (DCD), or one stage alone.

Examples::

    # the whole recipe on IU X-ray (text + indication) and covid_cxr_notes (images)
    echo-train all --data DATA/iu_xray --data DATA/covid_cxr_notes --out runs/echo-b8
    # one stage, from a given checkpoint
    echo-train rad --data DATA/iu_xray --init runs/echo-b8/ar --out runs/rad-only --steps 500
    # multi-process (DDP, gloo on CPU)
    accelerate launch --num_processes 2 -m train.cli ar --data ... --out ...
    # fine-tune a finished run on radiologist corrections, behind a no-regression gate (train/finetune.py)
    echo-train finetune --init runs/echo-b8/teacher --corrections corrections.jsonl --data DATA/iu_xray --out runs/ft1

Reports of IU X-ray and covid_cxr_notes are normalized (method.md §3.5) unless ``--no-normalize``; record
files (the correction export) are used as written. Training studies are the ``train`` split of every ``--data``; studies that share an image with the ``val`` /
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


def _records(paths: list[str], split: str, limit: int | None, *, normalize: bool = True):
    from echo_model.data import load_dataset

    out = []
    for p in paths:
        out += load_dataset(p, split=split, normalize=normalize)
    return out[:limit] if limit else out


def training_records(paths: list[str], limit: int | None = None, *, image_repeats: int = 1, normalize: bool = True):
    """The train split of every data set, minus studies sharing an image with val/test; studies with images
    repeated ``image_repeats`` times (they are few beside the text-only IU X-ray studies). ``normalize``:
    IU X-ray and covid_cxr_notes reports in the normalized form (method.md §3.5); record files never are."""
    from echo_model.data import deduplicate, remove_overlap

    train, _ = deduplicate(_records(paths, "train", None, normalize=normalize))
    held_out = _records(paths, "val", None, normalize=normalize) + _records(paths, "test", None, normalize=normalize)
    train, report = remove_overlap(train, held_out, by_text=False)
    train = train[:limit] if limit else train
    train = train + [r for r in train if r.images] * (image_repeats - 1)
    logging.info("training studies: %d (%s), image studies x%d", len(train), report, image_repeats)
    return train


def validation_records(paths: list[str], limit: int | None = 192, *, normalize: bool = True):
    """Held-out studies for the validation loss: the ``val`` split of every data set, studies with images first
    (they are few and are what the text-only studies cannot show), then the others up to ``limit`` in all."""
    val = _records(paths, "val", None, normalize=normalize)
    ordered = [r for r in val if r.images] + [r for r in val if not r.images]
    return ordered[:limit] if limit else ordered


def with_report_style(checkpoint, *, normalize: bool):
    """The checkpoint's spec says what it is trained to write: ``report_style="normalized"`` when the training
    reports are normalized (method.md §3.5), so the report check expects every region's statement; unchanged
    with ``--no-normalize``."""
    if normalize:
        spec = checkpoint.spec.replace(report_style="normalized")
        checkpoint.model.spec = checkpoint.processor.spec = spec
    return checkpoint


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="echo-train", description="Train ECHO's three stages.")
    ap.add_argument("stage", choices=["ar", "rad", "dcd", "all", "finetune"])
    ap.add_argument("--data", action="append", default=None,
                    help="data set folder or record JSONL (repeatable; required except for finetune, where it is the replay data)")
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
    ap.add_argument("--image-repeats", type=int, default=1, help="repeat studies that have images N times per epoch")
    ap.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                    help="train on normalized IU X-ray / covid_cxr_notes reports (the ECHO paper, §3.5; default on); "
                         "record files such as the correction export are always used as written")
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                    help="augment the repeats of image studies (window/level, gamma, 16-bit rescale, contrast, "
                         "crop/scale/rotation, noise, resolution; echo_model.augment; default on)")
    stop = ap.add_argument_group("validation and early stopping")
    stop.add_argument("--eval-every", type=int, default=50, help="validation loss every N steps (0 = none)")
    stop.add_argument("--val-limit", type=int, default=192, help="validation studies (image studies first)")
    stop.add_argument("--plateau", type=float, default=0.01,
                      help="stop a stage when the last fifth of its evaluations improved the best validation loss "
                           "by less than this fraction (default 0.01; 0 = run all steps); the best weights are kept")
    stop.add_argument("--min-steps", type=int, default=200, help="never stop a stage early before this many steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--resume", action="store_true")
    ft = ap.add_argument_group("finetune (--init is the teacher folder to start from)")
    ft.add_argument("--corrections", type=Path, default=None, help="the app's correction export (JSONL)")
    ft.add_argument("--init-student", default=None, help="original student for the gate (default: <init>/../student)")
    ft.add_argument("--held-out", type=float, default=0.2, help="share of corrections held out for the gate")
    ft.add_argument("--replay-ratio", type=float, default=1.0, help="replayed --data studies per training correction")
    ft.add_argument("--gate-metric", default="rougeL", help="rougeL, bleu4, ce_f1_5, ...")
    ft.add_argument("--gate-max-new-tokens", type=int, default=256)
    ft.add_argument("--dcd-max-new-tokens", type=int, default=256, help="trajectory budget of Stage III")
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.stage == "finetune":
        return _finetune(args, parser)
    if not args.data:
        parser.error("the following arguments are required: --data")
    from .pipeline import train_ar, train_dcd, train_rad

    records = training_records(args.data, args.limit, image_repeats=args.image_repeats, normalize=args.normalize)
    if not records:
        raise SystemExit(f"echo-train: error: no training studies in {args.data}")
    val_records = validation_records(args.data, args.val_limit, normalize=args.normalize) if args.eval_every else None
    if args.eval_every and not val_records:
        raise SystemExit(f"echo-train: error: --eval-every {args.eval_every} needs a val split in {args.data}; "
                         "pass --eval-every 0 to train without validation")
    augment = None
    if args.augment:
        from echo_model.augment import Augmenter

        augment = Augmenter(seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    def cfg(name: str, steps: int, lr: float) -> TrainConfig:
        return TrainConfig(out_dir=args.out / name, steps=args.steps or steps, batch_size=args.batch_size,
                           grad_accum=args.grad_accum, lr=lr, seed=args.seed, save_every=args.save_every,
                           resume=args.resume, warmup=min(100, (args.steps or steps) // 10 + 1),
                           eval_every=args.eval_every, plateau=args.plateau, min_steps=args.min_steps)

    extra = {"val_records": val_records, "augment": augment}

    summary_path = args.out / "summary.json"
    summary: dict = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.update(studies=len(records), data=args.data, validation_studies=len(val_records or []),
                   image_repeats=args.image_repeats, augment=bool(augment), normalize=args.normalize)
    stages = ["ar", "rad", "dcd"] if args.stage == "all" else [args.stage]
    ck = None
    for stage in stages:
        t0 = time.perf_counter()
        if stage == "ar":
            ck = ck or with_report_style(load_checkpoint(args.init, role="ar"), normalize=args.normalize)
            rep = train_ar(ck, records, cfg("ar", args.ar_steps, args.lr), **extra)
        elif stage == "rad":
            ck = ck or with_report_style(load_checkpoint(args.init, role="ar"), normalize=args.normalize)
            rep = train_rad(ck, records, cfg("teacher", args.rad_steps, args.rad_lr), layout=args.layout, **extra)
        else:
            ck = ck or with_report_style(load_checkpoint(args.init, role="teacher"), normalize=args.normalize)
            ck, drep = train_dcd(ck, records, cfg("student", args.dcd_steps, args.dcd_lr), top_k=args.top_k,
                                 threshold=args.threshold, **extra)
            summary["trajectories"] = vars(drep.trajectories) | {"seconds": round(drep.trajectory_seconds, 1)}
            rep = drep.train
        summary[stage] = {"wall_seconds": round(time.perf_counter() - t0, 1), "steps": rep.steps,
                          "first_loss": rep.first_loss, "last_loss": rep.last_loss,
                          "tokens_per_step": rep.tokens_per_step, "seconds_per_step": rep.seconds_per_step,
                          "max_steps": args.steps or {"ar": args.ar_steps, "rad": args.rad_steps, "dcd": args.dcd_steps}[stage],
                          "best_step": rep.best_step, "best_val_loss": rep.best_val_loss,
                          "stopped_early": rep.stopped_early, "plateau_improvement": rep.plateau_improvement}
        summary_path.write_text(json.dumps(summary, indent=2))
        logging.info("%s done: %s", stage, summary[stage])
    return 0


def _finetune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``echo-train finetune``: exit 0 when the gate accepts, 1 (message names metric and values) otherwise."""
    from echo_model.sampling import SamplerConfig
    from echo_model.data import load_records_jsonl

    from .finetune import finetune_on_corrections

    if not args.init or not args.corrections:
        parser.error("finetune needs --init TEACHER_FOLDER and --corrections EXPORT.jsonl")
    corrections = load_records_jsonl(args.corrections)
    replay = training_records(args.data, normalize=args.normalize) if args.data else []
    eval_records = (
        _records(args.data, "val", None, normalize=args.normalize) + _records(args.data, "test", None, normalize=args.normalize)
    ) if args.data else []

    def cfg(name: str, steps: int, lr: float) -> TrainConfig:
        steps = args.steps or steps
        return TrainConfig(out_dir=args.out / name, steps=steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                           lr=lr, seed=args.seed, save_every=0, warmup=min(100, steps // 10 + 1))

    try:
        report = finetune_on_corrections(
            args.init, corrections, replay=replay, eval_records=eval_records, out_dir=args.out,
            rad_cfg=cfg("teacher", args.rad_steps, args.rad_lr), dcd_cfg=cfg("student", args.dcd_steps, args.dcd_lr),
            held_out_fraction=args.held_out, replay_ratio=args.replay_ratio, seed=args.seed,
            gate_metric=args.gate_metric, sampler_config=SamplerConfig(max_new_tokens=args.gate_max_new_tokens),
            init_student=args.init_student, layout=args.layout,
            dcd_options={"top_k": args.top_k, "threshold": args.threshold, "max_new_tokens": args.dcd_max_new_tokens},
        )
    except (ValueError, FileExistsError) as err:
        raise SystemExit(f"echo-train finetune: error: {err}") from None
    if not report.accepted:
        raise SystemExit(f"echo-train finetune: {report.message}")
    print(report.message)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
