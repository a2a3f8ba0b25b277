"""Each stage lowers its loss on a tiny synthetic set; DCD targets on a toy teacher with known outputs."""

from __future__ import annotations

import copy

import pytest
import torch

from echo_model.data.records import StudyRecord
from train.engine import TrainConfig
from train.items import encode_items
from train.objectives import DiffusionObjective
from train.losses import dcd_loss, masked_diffusion_loss, step_weights
from train.pipeline import train_ar, train_dcd, train_rad
from conftest import make_checkpoint

REPORTS = [
    ("cough", "The heart is normal in size. The lungs are clear.", "No acute abnormality."),
    ("fever", "There is a small left pleural effusion.", "Small left effusion."),
    ("dyspnea", "Mild cardiomegaly. No pneumothorax.", "Cardiomegaly."),
    ("trauma", "No focal consolidation. Mediastinal contours are unremarkable.", "Normal chest."),
]


def _records():
    return [StudyRecord(id=f"s{i}", findings=f, impression=imp, indication=ind, source="synthetic", split="train")
            for i, (ind, f, imp) in enumerate(REPORTS)]


def _cfg(tmp_path, name, steps=30):
    return TrainConfig(out_dir=tmp_path / name, steps=steps, batch_size=4, lr=3e-3, warmup=3, log_every=5)


@pytest.fixture
def fresh(tokenizer):
    return make_checkpoint(tokenizer, block_length=4, std=0.02, sharpen=1.0)


def _decrease(report, frac=0.5):
    first = sum(h["loss"] for h in report.history[:3]) / 3
    last = sum(h["loss"] for h in report.history[-3:]) / 3
    assert last < frac * first, (first, last)


def test_ar_stage_lowers_loss_and_saves(fresh, tmp_path):
    report = train_ar(fresh, _records(), _cfg(tmp_path, "ar"))
    _decrease(report, 0.6)
    assert (tmp_path / "ar" / "model.safetensors").is_file()
    assert (tmp_path / "ar" / "loss.png").is_file()
    assert (tmp_path / "ar" / "loss.csv").read_text().startswith("step,loss")


def _fixed_noise_loss(ck, layout):
    """The RAD loss on one batch with seeded noise (the training loss itself is noisy: 1/t weights)."""
    items = encode_items(_records(), ck.model, ck.processor, block_pad=True)
    p = ck.processor
    objective = DiffusionObjective(p.pad_token_id, p.mask_token_id, ck.model.block_length, layout=layout, seed=123)
    with torch.no_grad():
        return sum(objective.loss(ck.model, objective.collate(items))[0].item() for _ in range(4)) / 4


@pytest.mark.parametrize("layout", ["rad", "full"])
def test_rad_stage_lowers_loss_with_frozen_vision(fresh, tmp_path, layout):
    vision_before = copy.deepcopy(fresh.model.model.model.visual.state_dict())
    before = _fixed_noise_loss(fresh, layout)
    train_rad(fresh, _records(), _cfg(tmp_path, layout, steps=40), layout=layout)
    after = _fixed_noise_loss(fresh, layout)
    assert after < 0.8 * before, (before, after)
    for k, v in fresh.model.model.model.visual.state_dict().items():
        assert torch.equal(v, vision_before[k]), k
    assert fresh.spec.role == "teacher"


def test_rad_layout_is_cheaper_than_full(fresh, tmp_path):
    rad = train_rad(copy.deepcopy(fresh), _records(), _cfg(tmp_path, "r", steps=2))
    full = train_rad(copy.deepcopy(fresh), _records(), _cfg(tmp_path, "f", steps=2), layout="full")
    assert rad.tokens_per_step < full.tokens_per_step


def test_dcd_stage_lowers_loss(fresh, tmp_path):
    train_rad(fresh, _records(), _cfg(tmp_path, "t", steps=60))
    # A teacher this small loops; keep its trajectories so the student has something to fit.
    student, rep = train_dcd(fresh, _records(), _cfg(tmp_path, "s", steps=30), max_new_tokens=40, max_repeats=100)
    assert rep.trajectories.kept + rep.trajectories.no_eos + rep.trajectories.degenerate == 4
    _decrease(rep.train, 0.7)
    assert student.spec.role == "student" and fresh.spec.role == "teacher"


def test_masked_diffusion_loss_weighting():
    logits = torch.zeros(1, 3, 5)
    targets = torch.tensor([[1, -100, 2]])
    weights = torch.tensor([[2.0, 0.0, 4.0]])
    loss = masked_diffusion_loss(logits, targets, weights, torch.tensor([3]))
    assert loss.item() == pytest.approx((2 + 4) * torch.log(torch.tensor(5.0)).item() / 3)


def test_dcd_loss_is_forward_kl_plus_eos_ce():
    teacher_ids = torch.tensor([[0, 1], [2, 0]])
    teacher_p = torch.tensor([[0.75, 0.25], [1.0, 0.0]])
    logits = torch.log(torch.tensor([[0.5, 0.5, 0.0 + 1e-9], [0.25, 0.25, 0.5]]))
    loss, parts = dcd_loss(logits, teacher_ids, teacher_p, torch.ones(2), torch.tensor([0, 2]), eos_token_id=2, eos_weight=1.0)
    kl0 = 0.75 * torch.log(torch.tensor(0.75 / 0.5)) + 0.25 * torch.log(torch.tensor(0.25 / 0.5))
    kl1 = torch.log(torch.tensor(1 / 0.5))
    assert parts["kl"] == pytest.approx(float((kl0 + kl1) / 2), rel=1e-4)
    assert parts["eos_ce"] == pytest.approx(float(-torch.log(torch.tensor(0.5))), rel=1e-4)
    assert loss.item() == pytest.approx(parts["kl"] + parts["eos_ce"], rel=1e-5)


def test_step_weights_mean_one_per_block():
    w = step_weights(torch.tensor([1, 2, 3, 2, 1, 1]), torch.tensor([0, 0, 0, 0, 7, 7]))
    assert w[:4].tolist() == pytest.approx([0.5, 1.0, 1.5, 1.0])
    assert w[4:].tolist() == pytest.approx([1.0, 1.0])


def test_plateau_improvement_measures_the_last_fifth():
    from train.engine import MIN_PLATEAU_WINDOW, plateau_improvement

    falling = [4.0, 3.0, 2.5, 2.2, 2.0, 1.9, 1.85, 1.8, 1.78, 1.76, 1.75, 1.74, 1.73, 1.72, 1.6]
    assert plateau_improvement(falling) == pytest.approx((1.74 - 1.6) / 1.74)  # last fifth: 3 evaluations
    # one evaluation is never a plateau: the last fifth must hold MIN_PLATEAU_WINDOW evaluations
    assert plateau_improvement(falling[: 5 * MIN_PLATEAU_WINDOW - 1]) is None
    flat = [4.0, 3.0, 2.0] + [2.0] * 12
    assert plateau_improvement(flat) == 0.0
    best_early = [4.0, 2.0] + [2.5, 2.4, 2.2, 2.1, 2.05, 2.02, 2.01, 2.3, 2.2, 2.1, 2.05, 2.02, 2.3]
    assert plateau_improvement(best_early) == 0.0


def test_validation_keeps_the_best_weights_and_draws_the_curve(fresh, tmp_path):
    from train.engine import validation_batches, validation_loss
    from train.objectives import AutoregressiveObjective

    cfg = TrainConfig(out_dir=tmp_path / "ar", steps=40, batch_size=4, lr=3e-2, warmup=2, log_every=5, eval_every=4)
    report = train_ar(fresh, _records(), cfg, val_records=_records()[:2])
    assert [v["step"] for v in report.validation] == list(range(4, 41, 4))
    best = min(report.validation, key=lambda v: v["val_loss"])
    assert (report.best_step, report.best_val_loss) == (best["step"], best["val_loss"])
    assert fresh.spec.revision == f"ar-{best['step']}"
    # the weights kept (and saved) are those of the best evaluation, not of the last step
    items = encode_items(_records()[:2], fresh.model, fresh.processor, block_pad=False)
    objective = AutoregressiveObjective(fresh.processor.pad_token_id)
    kept = validation_loss(fresh.model, objective, validation_batches(objective, items, 4), torch.device("cpu"))
    assert kept == pytest.approx(best["val_loss"], rel=1e-4)
    lines = (tmp_path / "ar" / "val.csv").read_text().splitlines()
    assert lines[0] == "step,val_loss" and len(lines) == 1 + len(report.validation)


def test_training_stops_when_validation_plateaus(fresh, tmp_path):
    cfg = TrainConfig(out_dir=tmp_path / "ar", steps=400, batch_size=4, lr=3e-3, warmup=2, log_every=5,
                      eval_every=2, plateau=0.9, min_steps=10)
    report = train_ar(fresh, _records(), cfg, val_records=_records()[:2])
    assert report.stopped_early and 10 <= report.steps < 400, report.steps
    assert report.plateau_improvement is not None and report.plateau_improvement < 0.9


def test_eval_every_without_validation_items_is_refused(fresh, tmp_path):
    cfg = TrainConfig(out_dir=tmp_path / "ar", steps=4, batch_size=4, eval_every=2)
    with pytest.raises(ValueError, match="eval_every=2 needs validation items"):
        train_ar(fresh, _records(), cfg)
    with pytest.raises(ValueError, match="plateau must be in"):
        TrainConfig(out_dir=tmp_path, plateau=1.5)
