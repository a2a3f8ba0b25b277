"""Stage I -> II -> III, each stage runnable alone (method.md §3; paper §3).

* Stage I (AR): next-token training of the whole model ("ECHO-AR"). The paper starts from a pretrained
  Lingshu-7B; the embedded model starts from random weights, so here Stage I also trains the vision tower.
* Stage II (RAD): the AR weights become a multi-step block-diffusion teacher ("ECHO-Base") trained with the
  RAD layout and the 1/t-weighted masked-diffusion loss; vision tower frozen, as in the paper.
* Stage III (DCD): teacher trajectories (greedy, tau-threshold), then the student, initialised from the
  teacher, learns one-step blocks by forward KL to the stitched commit-time targets with step-wise weights and
  an extra CE on ``<eos>``; vision tower frozen.

Choices the paper leaves open (documented in docs/training.md): per-block t ~ U(1e-3, 1) without clipping;
responses padded with ``<eos>`` to the end of their block; step weights normalised to mean 1 per block;
lambda_eos = 1; top-K = 64 teacher probabilities (renormalised); trajectories recorded once per stage run
(not refreshed during training); degenerate = no ``<eos>`` or a 4-gram occurring more than 3 times.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from echo_model.checkpoint import EchoCheckpoint
from echo_model.data.records import StudyRecord

from .engine import TrainConfig, TrainReport, train
from .items import encode_items
from .objectives import AutoregressiveObjective, DiffusionObjective, DistillationObjective
from .trajectories import TrajectoryStats, record_trajectories

log = logging.getLogger(__name__)


def _role(ck: EchoCheckpoint, role: str) -> EchoCheckpoint:
    """Set the checkpoint's role; the trainer names the revision after the step whose weights it saves."""
    spec = ck.spec.replace(role=role)
    ck.model.spec = spec
    ck.processor.spec = spec
    return ck


def _encode(ck: EchoCheckpoint, records: Sequence[StudyRecord] | None, *, block_pad: bool, image_base: Path | None,
            augment: Callable | None = None) -> list | None:
    if not records:
        return None
    return encode_items(records, ck.model, ck.processor, block_pad=block_pad, image_base=image_base, augment=augment)


def train_ar(ck: EchoCheckpoint, records: Sequence[StudyRecord], cfg: TrainConfig, *, image_base: Path | None = None,
             val_records: Sequence[StudyRecord] | None = None, augment: Callable | None = None) -> TrainReport:
    """Stage I. ``val_records``: held-out studies for the validation loss (early stopping, ``cfg.eval_every``);
    ``augment``: image augmentation of repeated image studies (:func:`train.items.encode_items`)."""
    items = encode_items(records, ck.model, ck.processor, block_pad=False, image_base=image_base, augment=augment)
    val = _encode(ck, val_records, block_pad=False, image_base=image_base)
    _role(ck, "ar")
    return train(ck, AutoregressiveObjective(ck.processor.pad_token_id), items, cfg, val_items=val)


def train_rad(ck: EchoCheckpoint, records: Sequence[StudyRecord], cfg: TrainConfig, *, layout: str = "rad",
              image_base: Path | None = None, val_records: Sequence[StudyRecord] | None = None,
              augment: Callable | None = None) -> TrainReport:
    items = encode_items(records, ck.model, ck.processor, block_pad=True, image_base=image_base, augment=augment)
    val = _encode(ck, val_records, block_pad=True, image_base=image_base)
    _role(ck, "teacher")
    objective = DiffusionObjective(ck.processor.pad_token_id, ck.processor.mask_token_id, ck.model.block_length,
                                   layout=layout, seed=cfg.seed, name=layout)
    return train(ck, objective, items, replace(cfg, freeze_vision=True), val_items=val)


@dataclass
class DistillReport:
    trajectories: TrajectoryStats
    trajectory_seconds: float
    train: TrainReport


def train_dcd(teacher: EchoCheckpoint, records: Sequence[StudyRecord], cfg: TrainConfig, *, image_base: Path | None = None,
              top_k: int = 64, threshold: float = 0.85, eos_weight: float = 1.0, step_weighting: bool = True,
              max_new_tokens: int = 256, max_repeats: int = 3, val_records: Sequence[StudyRecord] | None = None,
              augment: Callable | None = None) -> tuple[EchoCheckpoint, DistillReport]:
    """Returns the student (a copy of the teacher, trained) and the report. With ``val_records`` the teacher's
    trajectories on them are recorded too and give the validation loss (same targets, held-out studies)."""
    import time

    items = encode_items(records, teacher.model, teacher.processor, block_pad=True, image_base=image_base, augment=augment)
    t0 = time.perf_counter()
    data, stats = record_trajectories(teacher.model, teacher.processor, items, top_k=top_k, threshold=threshold,
                                      max_new_tokens=max_new_tokens, max_repeats=max_repeats)
    val_items = _encode(teacher, val_records, block_pad=True, image_base=image_base)
    val = record_trajectories(teacher.model, teacher.processor, val_items, top_k=top_k, threshold=threshold,
                              max_new_tokens=max_new_tokens, max_repeats=max_repeats)[0] if val_items else None
    t_traj = time.perf_counter() - t0
    if not data:
        raise RuntimeError(f"every teacher trajectory was dropped ({stats}); train the teacher longer")
    student = copy.deepcopy(teacher)
    _role(student, "student")
    p = student.processor
    objective = DistillationObjective(p.pad_token_id, p.mask_token_id, p.eos_token_id, student.model.block_length,
                                      eos_weight=eos_weight, step_weighting=step_weighting)
    report = train(student, objective, data, replace(cfg, freeze_vision=True), val_items=val or None)
    return student, DistillReport(stats, t_traj, report)
