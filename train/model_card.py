"""Model cards for the embedded checkpoints, and their installation into ``assets/``.

``python -m train.model_card --run runs/echo-b8 --metrics results/eval.json --to assets/checkpoints/echo-b8``
copies each trained role (ar, teacher, student) into ``assets/`` in fp16, with a ``README.md`` model card
(data and licences, steps, wall time, measured metrics, intended use). Installation is refused when the
held-out metrics of the new student are not better than those recorded in the installed card, unless
``--force`` is given (the first trained family replaces random weights). ``--metrics-only`` rewrites only the
installed cards' measured section and ``metrics.json``, for results re-measured without retraining.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from echo_model.loading import load_checkpoint

ROLES = ("ar", "teacher", "student")  # also the folder names echo-train writes
STAGE_KEY = {"ar": "ar", "teacher": "rad", "student": "dcd"}


def _training_line(s: dict) -> str:
    """One line on how the stage was trained: steps, wall time, losses and, with validation, the kept step."""
    nan = float("nan")
    line = (f"* Training: {s.get('steps', '?')} optimiser steps (of at most {s.get('max_steps', '?')}), "
            f"{s.get('wall_seconds', '?')} s wall time on 2 CPU cores, training loss {s.get('first_loss', nan):.3f} -> "
            f"{s.get('last_loss', nan):.3f}.")
    if s.get("best_val_loss") is not None:
        gain = s.get("plateau_improvement")
        line += (f" Validation loss (held-out studies, every evaluation in `val.csv` and in `loss.png`): best "
                 f"{s['best_val_loss']:.3f} at step {s['best_step']}, whose weights are these; "
                 + ("stopped early: " if s.get("stopped_early") else "ran to the step limit: ")
                 + (f"the last fifth of the evaluations improved it by {100 * gain:.2f} %." if gain is not None else "too few evaluations."))
    return line


def card_text(role: str, *, summary: dict, metrics: dict | None, spec) -> str:
    from echo_model.loading import EMBEDDED_LIMITATION, REAL_CHECKPOINT_HINT

    stage = STAGE_KEY[role]
    s = summary.get(stage, {})
    normalized = summary.get("normalize", True)
    lines = [
        f"# ECHO embedded checkpoint: {role} (b = {spec.block_length})",
        "",
        "**Intended use: demonstration and testing of the ECHO software. Not for diagnosis, not for clinical use.**",
        "",
        f"**What it cannot know.** {EMBEDDED_LIMITATION} {REAL_CHECKPOINT_HINT}",
        "",
        f"* Role: `{role}` — " + {
            "ar": "Stage I, autoregressive (ECHO-AR); decode with the `ar` sampler.",
            "teacher": "Stage II, RAD block-diffusion teacher (ECHO-Base); decode with `teacher` (or `vanilla`).",
            "student": "Stage III, DCD one-step student (ECHO); decode with `echo`.",
        }[role],
        f"* Revision: `{spec.revision}`; architecture: Qwen2.5-VL (stock transformers class), "
        f"one checkpoint of the b = {spec.block_length} family; stored in fp16, loaded in fp32 on CPU.",
        _training_line(s),
        f"* Training studies: {summary.get('studies', '?')} (train splits of the data below, de-duplicated against "
        f"val/test images; studies with images repeated {summary.get('image_repeats', 1)} times"
        + (", every repeat after the first augmented (window/level, gamma, 16-bit rescale, contrast, crop/scale/"
           "rotation, noise, resolution, JPEG: `echo_model.augment`)" if summary.get("augment") else "")
        + f"); validation studies: {summary.get('validation_studies', 0)} (val splits, image studies first).",
        "",
        "## Data and licences",
        "",
        "* IU X-ray (Open-i) reports, CC BY-NC-ND 4.0 (Demner-Fushman et al., JAMIA 2016): text only (no images here);",
        "  the prompt carries each study's indication"
        + ("; reports in the normalized form (method.md §3.5, `echo_model.data.normalize`)." if normalized else "."),
        "* covid_cxr_notes: only images whose licence allows derivatives (CC BY / BY-SA / BY-NC / BY-NC-SA / CC0);",
        "  only the note sentences that describe the radiograph"
        + (", normalized (regions the note does not mention are stated normal, never against the note; notes without a "
           "radiograph sentence are not used)." if normalized else "."),
        "* Consequently these weights are for **non-commercial** use only.",
        "",
    ]
    if metrics:
        lines += metrics_section(metrics)
    return "\n".join(lines)


MEASURED = "## Measured (held-out test split)"


def metrics_section(metrics: dict) -> list[str]:
    """The card's measured-metrics section (its last section)."""
    lines = [MEASURED, "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return [*lines, ""]


def refresh_metrics(to: Path, metrics: dict[str, dict], *, roles: tuple[str, ...] = ROLES) -> None:
    """Replace the measured section and ``metrics.json`` of installed cards (weights and the rest of each card
    untouched): results re-measured without retraining, e.g. under a stricter report check."""
    for role in roles:
        card = to / role / "README.md"
        if role not in metrics or not card.is_file():
            raise ValueError(f"no metrics for {role!r} in the metrics file, or no installed card at {card}")
        head = card.read_text().split(MEASURED)[0].rstrip("\n")
        card.write_text(head + "\n\n" + "\n".join(metrics_section(metrics[role])))
        (to / role / "metrics.json").write_text(json.dumps(metrics[role], indent=2))
        print(f"metrics of {role} -> {card}")


def install(run: Path, to: Path, *, metrics: dict[str, dict] | None, force: bool, gate_key: str = "ce_f1_5",
            roles: tuple[str, ...] = ROLES) -> None:
    """Install ``roles`` of ``run`` into ``to``; the other roles' folders are left as they are (a run that trained
    Stage III alone, ``echo-train dcd``, replaces only the student)."""
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise ValueError(f"roles must be a non-empty subset of {ROLES}, got {roles!r}")
    summary = json.loads((run / "summary.json").read_text())
    missing = [r for r in roles if STAGE_KEY[r] not in summary or not (run / r).is_dir()]
    if missing:
        raise ValueError(f"{run} has no trained {', '.join(missing)} (its summary.json records "
                         f"{sorted(k for k in summary if k in STAGE_KEY.values())}); pass --roles with the roles it trained")
    old_card = to / "student" / "metrics.json"
    if "student" in roles and metrics and old_card.is_file() and not force:
        old = json.loads(old_card.read_text()).get(gate_key)
        new = metrics.get("student", {}).get(gate_key)
        if old is not None and (new is None or new <= old):
            raise SystemExit(f"refusing to install: student {gate_key} {new} does not improve on the installed {old}")
    for role in roles:
        src = run / role
        ck = load_checkpoint(str(src), device="cpu")
        ck.model.model.to(torch.float16)
        dst = to / role
        if dst.exists():
            shutil.rmtree(dst)
        ck.save_pretrained(dst)
        for extra in ("loss.csv", "loss.png", "val.csv"):
            if (src / extra).is_file():
                shutil.copy(src / extra, dst / extra)
        m = (metrics or {}).get(role)
        (dst / "README.md").write_text(card_text(role, summary=summary, metrics=m, spec=ck.spec))
        if m:
            (dst / "metrics.json").write_text(json.dumps(m, indent=2))
        print(f"installed {role} -> {dst}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=None, help="output folder of echo-train all (or of one stage)")
    ap.add_argument("--to", type=Path, default=Path("assets/checkpoints/echo-b8"))
    ap.add_argument("--metrics", type=Path, default=None, help="JSON {role: {metric: value}} from echo-eval")
    ap.add_argument("--roles", nargs="+", choices=ROLES, default=list(ROLES),
                    help="roles to install (default all three); e.g. --roles student after echo-train dcd")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--metrics-only", action="store_true",
                    help="only replace the installed cards' measured section and metrics.json (needs --metrics)")
    args = ap.parse_args(argv)
    if args.metrics_only != (args.run is None) or (args.metrics_only and args.metrics is None):
        ap.error("give --run RUN to install, or --metrics-only --metrics FILE to refresh the installed cards")
    metrics = json.loads(args.metrics.read_text()) if args.metrics else None
    try:
        if args.metrics_only:
            refresh_metrics(args.to, metrics, roles=tuple(args.roles))
            return
        install(args.run, args.to, metrics=metrics, force=args.force, roles=tuple(args.roles))
    except ValueError as err:
        raise SystemExit(f"train.model_card: error: {err}") from None


if __name__ == "__main__":
    main()
