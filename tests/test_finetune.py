"""Fine-tuning on corrections: deterministic split, image de-dup, replay, and the no-regression gate."""

from __future__ import annotations

import pytest
from conftest import make_checkpoint, synthetic_cxr

from echo_model.loading import load_checkpoint
from echo_model.data.records import Correction, ImageRef, StudyRecord
from echo_model.sampling import SamplerConfig
from train import finetune as ft
from train.engine import TrainConfig
from train.pipeline import train_rad

TEXTS = [
    ("cough", "The heart is normal in size. The lungs are clear.", "No acute abnormality."),
    ("fever", "There is a small left pleural effusion.", "Small left effusion."),
    ("dyspnea", "Mild cardiomegaly. No pneumothorax.", "Cardiomegaly."),
    ("trauma", "No focal consolidation. Mediastinal contours are unremarkable.", "Normal chest."),
]
FIX = Correction(draft_id="d", model="echo", model_revision="r", draft_findings="x", draft_impression="y",
                 editor="dr", signed_at="2026-01-01T00:00:00")


def _corrections(n: int, images: dict[int, str] | None = None, prefix: str = "c") -> list[StudyRecord]:
    images = images or {}
    out = []
    for i in range(n):
        ind, f, imp = TEXTS[i % len(TEXTS)]
        imgs = (ImageRef(images[i], "frontal"),) if i in images else ()
        out.append(StudyRecord(id=f"{prefix}{i}", findings=f, impression=imp, indication=ind, images=imgs,
                               source="echo_app", correction=FIX))
    return out


def _png(path, seed: int) -> str:
    synthetic_cxr(seed, size=(48, 40)).save(path)
    return str(path)


def _cfg(tmp_path, steps=3):
    return TrainConfig(out_dir=tmp_path / "unused", steps=steps, batch_size=4, lr=1e-5, warmup=1, log_every=1)


@pytest.fixture(scope="module")
def init_dir(tokenizer, tmp_path_factory):
    """``run/teacher`` and ``run/student`` tiny checkpoints, as a finished ``echo-train all`` leaves them.

    The teacher gets 20 RAD steps first: a random tiny teacher never writes ``<eos>``, and Stage III drops
    trajectories without one.
    """
    run = tmp_path_factory.mktemp("run")
    teacher = make_checkpoint(tokenizer, block_length=4, std=0.02, sharpen=1.0, role="teacher")
    train_rad(teacher, _corrections(8), TrainConfig(out_dir=run / "teacher", steps=20, batch_size=4, lr=3e-3, warmup=3))
    make_checkpoint(tokenizer, block_length=4, std=0.02, sharpen=1.0, role="student").save_pretrained(run / "student")
    return run


def test_split_is_deterministic_and_disjoint():
    recs = _corrections(40)
    train, held = ft.split_corrections(recs, 0.2)
    train2, held2 = ft.split_corrections(list(reversed(recs)), 0.2)
    assert {r.id for r in train} == {r.id for r in train2} and {r.id for r in held} == {r.id for r in held2}
    assert not {r.id for r in train} & {r.id for r in held}
    assert len(train) + len(held) == 40 and 1 <= len(held) < 20
    # adding corrections never moves old ones between splits
    _, held_more = ft.split_corrections(recs + _corrections(20, prefix="z"), 0.2)
    assert {r.id for r in held} <= {r.id for r in held_more}


def test_split_refuses_too_few_corrections():
    with pytest.raises(ValueError, match="at least 5 corrections"):
        ft.split_corrections(_corrections(4), 0.2)
    train, held = ft.split_corrections(_corrections(5), 0.2)  # guaranteed non-empty from 1/f on
    assert held and train


def test_replay_count_and_seed():
    pool = _corrections(30, prefix="r")
    a = ft.sample_replay(pool, 7, 1.0, seed=3)
    assert len(a) == 7 and a == ft.sample_replay(pool, 7, 1.0, seed=3)
    assert len(ft.sample_replay(pool, 4, 2.5, seed=0)) == 10
    assert len(ft.sample_replay(pool, 40, 1.0, seed=0)) == 30  # capped at the pool
    assert ft.sample_replay(pool, 5, 0.0, seed=0) == []


def _fake_scores(candidate: float, original: float = 0.5):
    calls = []

    def score(records, checkpoint, *, sampler, config, metric, label):
        calls.append((label, checkpoint.spec.role, sampler, metric, len(records)))
        return candidate if label == "candidate" else original

    return score, calls


def _run(init_dir, tmp_path, corrections, **kw):
    kw.setdefault("replay", _corrections(12, prefix="r"))
    kw.setdefault("eval_records", [])
    return ft.finetune_on_corrections(
        str(init_dir / "teacher"), corrections, out_dir=tmp_path / "out", rad_cfg=_cfg(tmp_path),
        dcd_cfg=_cfg(tmp_path), sampler_config=SamplerConfig(max_new_tokens=8),
        dcd_options={"max_new_tokens": 40, "max_repeats": 100}, **kw)


def test_overlap_with_eval_images_removed_and_replay_mixed(init_dir, tmp_path, monkeypatch):
    shared = _png(tmp_path / "shared.png", 1)
    own = {i: _png(tmp_path / f"own{i}.png", 10 + i) for i in range(10)}
    train_ids = {r.id for r in ft.split_corrections(_corrections(10), 0.2)[0]}
    victim = min(train_ids)
    own[int(victim[1:])] = shared  # one training correction shares its image with an evaluation study
    recs = _corrections(10, images=own)
    copy = _png(tmp_path / "copy_of_shared.png", 1)  # same pixels, another file: matched by content hash
    eval_rec = StudyRecord(id="e0", findings="Other text entirely.", impression="", images=(ImageRef(copy),), split="test")
    score, calls = _fake_scores(candidate=0.5)
    monkeypatch.setattr(ft, "gate_score", score)
    mixed = []
    real_rad = __import__("train.pipeline", fromlist=["train_rad"]).train_rad

    def spy_rad(ck, records, cfg, **kw):
        mixed.extend(records)
        return real_rad(ck, records, cfg, **kw)

    monkeypatch.setattr("train.pipeline.train_rad", spy_rad)
    rep = _run(init_dir, tmp_path, recs, eval_records=[eval_rec], replay_ratio=1.0)
    assert rep.removed_overlap == 1 and rep.train_corrections == len(train_ids) - 1
    ids = {r.id for r in mixed}
    assert victim not in ids and not ids & set(rep.held_out)
    assert rep.replay == rep.train_corrections and sum(i.startswith("r") for i in ids) == rep.replay
    assert len(mixed) == 2 * rep.train_corrections
    assert {c[:3] for c in calls} == {("original", "teacher", "teacher"), ("candidate", "teacher", "teacher"),
                                      ("original", "student", "echo"), ("candidate", "student", "echo")}
    assert rep.accepted


def test_gate_refuses_worse_candidate(init_dir, tmp_path, monkeypatch):
    score, _ = _fake_scores(candidate=0.4, original=0.5)
    monkeypatch.setattr(ft, "gate_score", score)
    rep = _run(init_dir, tmp_path, _corrections(10))
    assert rep.accepted is False and rep.written == []
    assert (rep.student.original, rep.student.candidate) == (0.5, 0.4)
    assert "rougeL" in rep.message and "0.4000" in rep.message
    out = tmp_path / "out"
    assert not (out / "teacher").exists() and not (out / "student").exists() and not (out / ft.CANDIDATE).exists()


def test_gate_accepts_and_writes_loadable_checkpoints(init_dir, tmp_path, monkeypatch):
    score, _ = _fake_scores(candidate=0.5, original=0.5)  # equal is not worse
    monkeypatch.setattr(ft, "gate_score", score)
    rep = _run(init_dir, tmp_path, _corrections(10))
    out = tmp_path / "out"
    assert rep.accepted and rep.written == ["teacher", "student"] and not (out / ft.CANDIDATE).exists()
    assert load_checkpoint(str(out / "teacher")).spec.role == "teacher"
    assert load_checkpoint(str(out / "student")).spec.role == "student"
    assert (out / ft.REPORT_NAME).is_file()


def test_real_gate_score_and_cli_rejection(init_dir, tmp_path, monkeypatch, capsys):
    """The unpatched scorer runs the sampler; the CLI exits non-zero naming the metric and both values."""
    from echo_model.data.records import write_jsonl
    from train.cli import main

    ck = load_checkpoint(str(init_dir / "student"))
    value = ft.gate_score(_corrections(2), ck, sampler="echo", config=SamplerConfig(max_new_tokens=8),
                          metric="rougeL", label="original")
    assert 0.0 <= value <= 1.0
    write_jsonl(_corrections(10), tmp_path / "export.jsonl")
    score, _ = _fake_scores(candidate=0.1, original=0.3)
    monkeypatch.setattr(ft, "gate_score", score)
    with pytest.raises(SystemExit) as exc:
        main(["finetune", "--init", str(init_dir / "teacher"), "--corrections", str(tmp_path / "export.jsonl"),
              "--out", str(tmp_path / "cli"), "--rad-steps", "2", "--dcd-steps", "2", "--batch-size", "4",
              "--gate-max-new-tokens", "8", "--dcd-max-new-tokens", "40",
              "--rad-lr", "1e-5", "--dcd-lr", "1e-5"])
    msg = str(exc.value.code)
    assert "rougeL" in msg and "0.1000" in msg and "0.3000" in msg
    assert not (tmp_path / "cli" / "teacher").exists()
