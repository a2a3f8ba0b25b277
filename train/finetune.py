"""Fine-tune a teacher/student pair on radiologist corrections, behind a no-regression gate.

``finetune_on_corrections`` takes the app's correction export (``StudyRecord`` with ``.correction``), and:

1. splits the corrections into train / held-out by a stable hash of the record id (the same correction lands in
   the same split on every run and machine);
2. drops training corrections identical to another one, or sharing an image with the held-out corrections or
   with ``eval_records`` (image-content hash, ``remove_overlap(..., by_text=False)``);
3. mixes in ``replay_ratio x len(train corrections)`` studies sampled (seeded) from the original training data,
   so the model does not forget what it knew;
4. runs Stage II (RAD) from the given teacher and Stage III (DCD) from the fine-tuned teacher, with the
   ordinary stage code (:func:`train.pipeline.train_rad`, :func:`train.pipeline.train_dcd`);
5. scores the original and the new checkpoints on the held-out corrections (student: ``echo`` sampler,
   teacher: ``teacher`` sampler) and writes ``<out>/teacher`` and ``<out>/student`` only when neither new
   checkpoint is worse on ``gate_metric``. Training writes into ``<out>/_candidate``, which is moved into
   place on acceptance and deleted otherwise, so a rejected run leaves no checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from echo_model.data.records import StudyRecord

from .engine import TrainConfig

log = logging.getLogger(__name__)

SPLIT_NAMESPACE = "echo-finetune"
CANDIDATE = "_candidate"
REPORT_NAME = "finetune.json"


def held_out_key(record_id: str) -> float:
    """The record's position in [0, 1): SHA-256 of ``namespace|id``, first 8 hex digits / 16**8."""
    digest = hashlib.sha256(f"{SPLIT_NAMESPACE}|{record_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 16**8


def min_corrections(held_out_fraction: float) -> int:
    """The fewest corrections for which the held-out split is guaranteed non-empty."""
    return math.ceil(1 / held_out_fraction - 1e-9)


def split_corrections(
    corrections: Sequence[StudyRecord], held_out_fraction: float = 0.2
) -> tuple[list[StudyRecord], list[StudyRecord]]:
    """Deterministic, disjoint (train, held_out) split of the corrections, by a stable hash of the id.

    A correction is held out when its :func:`held_out_key` is below ``held_out_fraction``, so adding
    corrections never moves old ones between splits. When that leaves the held-out split empty although
    there are at least :func:`min_corrections` corrections, the correction with the lowest key is held out.

    Raises:
        ValueError: the fraction is not in (0, 1), ids repeat, too few corrections to hold any out, or none
            would be left to train on.
    """
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    ids = [r.id for r in corrections]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"correction ids must be unique; repeated: {dup[:5]}")
    need = min_corrections(held_out_fraction)
    if len(corrections) < need:
        raise ValueError(
            f"cannot hold out {held_out_fraction:.0%} of {len(corrections)} correction(s) for the no-regression "
            f"gate: the held-out split would be empty; at least {need} corrections are needed "
            f"(or raise --held-out)"
        )
    keyed = sorted(corrections, key=lambda r: (held_out_key(r.id), r.id))
    held = [r for r in keyed if held_out_key(r.id) < held_out_fraction] or keyed[:1]
    held_ids = {r.id for r in held}
    train = [r for r in corrections if r.id not in held_ids]
    held = [r for r in corrections if r.id in held_ids]  # input order
    if not train:
        raise ValueError(
            f"all {len(corrections)} corrections fell into the held-out split (held_out_fraction "
            f"{held_out_fraction}); export more corrections or lower --held-out"
        )
    return train, held


def sample_replay(replay: Sequence[StudyRecord], n_train: int, replay_ratio: float, seed: int) -> list[StudyRecord]:
    """``round(replay_ratio * n_train)`` studies drawn without replacement (seeded) from ``replay``."""
    if replay_ratio < 0:
        raise ValueError(f"replay_ratio must be >= 0, got {replay_ratio}")
    want = round(replay_ratio * n_train)
    if want > len(replay):
        log.warning("replay: %d studies wanted, only %d available; using all of them", want, len(replay))
    return random.Random(seed).sample(list(replay), min(want, len(replay)))


@dataclass
class GateResult:
    """One checkpoint pair on the held-out corrections."""

    role: str  # "teacher" or "student"
    sampler: str
    original: float
    candidate: float

    @property
    def passed(self) -> bool:
        return self.candidate >= self.original


@dataclass
class FinetuneReport:
    accepted: bool
    gate_metric: str
    teacher: GateResult
    student: GateResult | None  # None: no original student to compare with (student gate skipped)
    corrections: int
    train_corrections: int
    held_out: list[str]
    removed_duplicates: int
    removed_overlap: int
    replay: int
    out_dir: Path
    written: list[str] = field(default_factory=list)
    losses: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str:
        parts = []
        for g in (self.teacher, self.student):
            if g is not None:
                sign = ">=" if g.passed else "<"
                parts.append(f"{g.role} {self.gate_metric} {g.candidate:.4f} {sign} original {g.original:.4f}")
        if self.student is None:
            parts.append("student gate skipped (no original student)")
        verdict = "accepted" if self.accepted else "rejected, nothing written"
        return f"{verdict} on {len(self.held_out)} held-out corrections: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        data["message"] = self.message
        return data


def gate_score(records: Sequence[StudyRecord], checkpoint, *, sampler: str, config, metric: str, label: str) -> float:
    """``metric`` of ``checkpoint`` drafting ``records`` with ``sampler`` (``label``: ``original`` or
    ``candidate``, for logs; tests replace this function)."""
    from echo_eval.evaluation import evaluate_records

    result = evaluate_records(records, checkpoint, sampler=sampler, config=config, progress=False)
    if metric not in result.metrics:
        raise ValueError(f"unknown gate metric {metric!r}; available: {sorted(result.metrics)}")
    value = float(result.metrics[metric])
    log.info("gate: %s %s (%s) %s = %.4f", label, checkpoint.spec.role, sampler, metric, value)
    return value


def default_student(init_teacher: str | Path) -> Path | None:
    """The ``student`` folder beside the teacher folder, when it is a checkpoint."""
    from echo_model.loading import resolve_source

    folder = resolve_source(str(init_teacher), role="teacher")
    sibling = folder.parent / "student"
    return sibling if (sibling / "config.json").is_file() and sibling.resolve() != folder.resolve() else None


def finetune_on_corrections(
    init_teacher: str | Path,
    corrections: list[StudyRecord],
    *,
    replay: list[StudyRecord],
    eval_records: list[StudyRecord] | None,
    out_dir: Path,
    rad_cfg: TrainConfig,
    dcd_cfg: TrainConfig,
    held_out_fraction: float = 0.2,
    replay_ratio: float = 1.0,
    seed: int = 0,
    gate_metric: str = "rougeL",
    sampler_config=None,
    init_student: str | Path | None = None,
    dcd_options: dict[str, Any] | None = None,
    layout: str = "rad",
) -> FinetuneReport:
    """Fine-tune on corrections with replay; keep the result only if it does not regress (module docstring).

    Args:
        init_teacher: the teacher checkpoint folder to start from (Stage II input).
        corrections: the correction export (unique ids).
        replay: the original training studies to mix in.
        eval_records: studies that must not share an image with the training corrections (val/test).
        out_dir: where ``teacher/`` and ``student/`` go on acceptance (``_candidate/`` while training).
        rad_cfg, dcd_cfg: the two stages' settings; their ``out_dir`` is replaced.
        held_out_fraction: share of corrections held out for the gate.
        replay_ratio: replayed studies per training correction.
        seed: replay sampling seed.
        gate_metric: a key of :func:`echo_eval.evaluation.score_predictions` (``rougeL``, ``bleu4``, ``ce_f1_5``).
        sampler_config: decoding settings of the gate (default: the official ones).
        init_student: the original student to compare with; default ``<teacher folder>/../student`` when
            present, otherwise the student gate is skipped.
        dcd_options: extra keyword arguments of :func:`train.pipeline.train_dcd` (``top_k``, ``threshold``,
            ``max_new_tokens``, ``max_repeats``...).
        layout: Stage II layout (``rad`` or ``full``).

    Raises:
        ValueError: too few corrections for the split, or none left to train on after de-duplication.
        FileExistsError: ``out_dir`` already holds ``teacher/`` or ``student/``.
    """
    from echo_model.data import ImageHasher, deduplicate, remove_overlap
    from echo_model.loading import load_checkpoint
    from echo_model.sampling import SamplerConfig

    from .pipeline import train_dcd, train_rad

    out_dir = Path(out_dir)
    final = {role: out_dir / role for role in ("teacher", "student")}
    existing = [str(p) for p in final.values() if p.exists()]
    if existing:
        raise FileExistsError(f"{existing} already exist; choose a new --out (a fine-tune never overwrites)")
    train_corr, held_out = split_corrections(corrections, held_out_fraction)
    hasher = ImageHasher()
    train_corr, dup = deduplicate(train_corr, hasher=hasher)
    protected = list(held_out) + list(eval_records or [])
    train_corr, overlap = remove_overlap(train_corr, protected, by_text=False, hasher=hasher)
    if not train_corr:
        raise ValueError(
            f"no training corrections left: of {len(corrections)}, {len(held_out)} are held out, "
            f"{dup.duplicates_within} are duplicates and {overlap.removed} share an image with held-out or "
            f"evaluation studies"
        )
    replay_pool = [r for r in replay if r.id not in {c.id for c in corrections}]
    if protected and replay_pool:
        replay_pool, _ = remove_overlap(replay_pool, protected, by_text=False, hasher=hasher)
    replayed = sample_replay(replay_pool, len(train_corr), replay_ratio, seed)
    mix = list(train_corr) + replayed
    random.Random(seed).shuffle(mix)
    log.info("fine-tune: %d corrections (%d train, %d held out, %d duplicates, %d overlapping), %d replayed",
             len(corrections), len(train_corr), len(held_out), dup.duplicates_within, overlap.removed, len(replayed))

    teacher_source = str(init_teacher)
    student_source = init_student if init_student is not None else default_student(teacher_source)
    config = sampler_config or SamplerConfig()
    candidate = out_dir / CANDIDATE
    created = not out_dir.exists()
    if candidate.exists():
        shutil.rmtree(candidate)  # left over from an interrupted run: never a result
    accepted = False
    try:
        teacher = load_checkpoint(teacher_source, role="teacher")
        rad = train_rad(teacher, mix, replace(rad_cfg, out_dir=candidate / "teacher"), layout=layout)
        student, drep = train_dcd(teacher, mix, replace(dcd_cfg, out_dir=candidate / "student"), **(dcd_options or {}))
        del teacher, student

        def gate(role: str, sampler: str, original: str | Path) -> GateResult:
            scores = {}
            for label, source in (("original", original), ("candidate", candidate / role)):
                ck = load_checkpoint(str(source), role=role)
                scores[label] = gate_score(held_out, ck, sampler=sampler, config=config, metric=gate_metric, label=label)
            return GateResult(role, sampler, scores["original"], scores["candidate"])

        teacher_gate = gate("teacher", "teacher", teacher_source)
        student_gate = gate("student", "echo", student_source) if student_source is not None else None
        accepted = teacher_gate.passed and (student_gate is None or student_gate.passed)
        report = FinetuneReport(
            accepted=accepted, gate_metric=gate_metric, teacher=teacher_gate, student=student_gate,
            corrections=len(corrections), train_corrections=len(train_corr), held_out=[r.id for r in held_out],
            removed_duplicates=dup.duplicates_within, removed_overlap=overlap.removed, replay=len(replayed),
            out_dir=out_dir,
            losses={"rad": [rad.first_loss, rad.last_loss], "dcd": [drep.train.first_loss, drep.train.last_loss],
                    "trajectories": vars(drep.trajectories)},
        )
        if accepted:
            for role, dest in final.items():
                shutil.move(str(candidate / role), str(dest))
                report.written.append(role)
            (out_dir / REPORT_NAME).write_text(json.dumps(report.to_json(), indent=2, default=str))
    finally:
        if candidate.exists():
            shutil.rmtree(candidate)
        if not accepted and created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
    log.info("fine-tune %s", report.message)
    return report
