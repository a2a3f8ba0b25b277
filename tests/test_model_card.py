"""Installing trained checkpoints into an embedded family folder (train.model_card)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_checkpoint

from echo_model.loading import load_checkpoint
from train.model_card import ROLES, install, main

STAGES = {"ar": "ar", "teacher": "rad", "student": "dcd"}


def _run(tmp_path, tokenizer, name: str, roles, *, seed: int):
    """A run folder as echo-train writes it: one folder per trained role and a summary of its stages."""
    run = tmp_path / name
    summary = {"studies": 12, "validation_studies": 4, "image_repeats": 1, "augment": False, "normalize": True}
    for i, role in enumerate(roles):
        ck = make_checkpoint(tokenizer, block_length=8, seed=seed + i)
        ck.save_pretrained(run / role)
        summary[STAGES[role]] = {"steps": 10 + i, "max_steps": 20, "wall_seconds": 1.5, "first_loss": 2.0,
                                 "last_loss": 1.0, "best_val_loss": 0.9, "best_step": 10, "stopped_early": True,
                                 "plateau_improvement": 0.004}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def _weights(folder):
    return {k: v.clone() for k, v in load_checkpoint(str(folder), device="cpu").model.model.state_dict().items()}


def test_installing_only_the_student_leaves_the_other_roles_untouched(tmp_path, tokenizer):
    family = tmp_path / "family"
    install(_run(tmp_path, tokenizer, "all", ROLES, seed=0), family, metrics=None, force=True)
    before = {r: (family / r / "model.safetensors").read_bytes() for r in ROLES}
    cards = {r: (family / r / "README.md").read_text() for r in ROLES}

    dcd = _run(tmp_path, tokenizer, "dcd", ("student",), seed=10)
    install(dcd, family, metrics={"student": {"rougeL": 0.5}}, force=True, roles=("student",))

    for role in ("ar", "teacher"):
        assert (family / role / "model.safetensors").read_bytes() == before[role]
        assert (family / role / "README.md").read_text() == cards[role]
    assert (family / "student" / "model.safetensors").read_bytes() != before["student"]
    new, trained = _weights(family / "student"), _weights(dcd / "student")
    assert all(torch.allclose(new[k], trained[k].half().float()) for k in trained)  # stored in fp16
    card = (family / "student" / "README.md").read_text()
    assert "10 optimiser steps (of at most 20)" in card and "| rougeL | 0.5000 |" in card


def test_a_role_the_run_did_not_train_is_refused_by_name(tmp_path, tokenizer, capsys):
    dcd = _run(tmp_path, tokenizer, "dcd", ("student",), seed=10)
    family = tmp_path / "family"
    with pytest.raises(ValueError, match=r"no trained ar, teacher .*\['dcd'\].*--roles"):
        install(dcd, family, metrics=None, force=True)
    assert not family.exists()  # nothing half-installed
    with pytest.raises(SystemExit, match="train.model_card: error: .*no trained ar"):
        main(["--run", str(dcd), "--to", str(family), "--force"])
    with pytest.raises(ValueError, match="roles must be a non-empty subset"):
        install(dcd, family, metrics=None, force=True, roles=("critic",))


def test_metrics_only_rewrites_the_measured_section_and_nothing_else(tmp_path, tokenizer):
    family = tmp_path / "family"
    install(_run(tmp_path, tokenizer, "all", ROLES, seed=0), family, metrics={r: {"rougeL": 0.1} for r in ROLES},
            force=True)
    weights = {r: (family / r / "model.safetensors").read_bytes() for r in ROLES}
    heads = {r: (family / r / "README.md").read_text().split("## Measured")[0] for r in ROLES}
    new = {r: {"rougeL": 0.25, "well_formed": 0.5} for r in ROLES}
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps(new))

    main(["--metrics-only", "--metrics", str(metrics), "--to", str(family)])

    for role in ROLES:
        card = (family / role / "README.md").read_text()
        assert card.startswith(heads[role]) and "| rougeL | 0.2500 |" in card and "0.1000" not in card
        assert json.loads((family / role / "metrics.json").read_text()) == new[role]
        assert (family / role / "model.safetensors").read_bytes() == weights[role]
    with pytest.raises(SystemExit):
        main(["--metrics-only", "--to", str(family)])  # no metrics file: a usage error
