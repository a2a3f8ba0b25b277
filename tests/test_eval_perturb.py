"""``echo-eval --perturb NAME``: the views reaching the model are perturbed, and the JSON says which way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_cxr

from echo_eval.eval_cli import main
from echo_eval.evaluation import load_study_input, predict_records
from echo_model.augment import PERTURBATIONS, perturb
from echo_model.data.records import StudyRecord, write_jsonl
from echo_model.drafting import Drafter
from echo_model.sampling import SamplerConfig

STUDIES = [  # id, number of views
    ("p1", 1),
    ("p2", 2),
    ("p3", 0),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("perturb_data")
    records = []
    for n, (sid, views) in enumerate(STUDIES):
        refs = []
        for k in range(views):
            rel = f"{sid}_{k}.png"
            synthetic_cxr(10 * n + k, (120, 100)).save(root / rel)
            refs.append({"path": rel, "view": "frontal" if k == 0 else "lateral"})
        records.append(
            StudyRecord.from_dict(
                {"id": sid, "findings": "The lungs are clear.", "impression": "No acute disease.",
                 "images": refs, "indication": None, "split": "test", "source": "handwritten"}
            )
        )
    path = root / "studies.jsonl"
    write_jsonl(records, path)
    return path


def _records(dataset: Path) -> list[StudyRecord]:
    from echo_model.data import load_dataset

    return list(load_dataset(dataset, split="test"))


def _spy_encode(checkpoint, monkeypatch) -> list[list[np.ndarray]]:
    """Record the pixels of every view the processor is given (one list per study)."""
    seen: list[list[np.ndarray]] = []
    encode = checkpoint.processor.encode

    def spy(images, *, indication=None, lang="en"):
        seen.append([np.asarray(im, dtype=np.float64) for im in images])
        return encode(images, indication=indication, lang=lang)

    monkeypatch.setattr(checkpoint.processor, "encode", spy)
    return seen


def test_the_model_sees_the_perturbed_views(dataset, checkpoint, monkeypatch):
    records = _records(dataset)
    seen = _spy_encode(checkpoint, monkeypatch)
    cfg = SamplerConfig(max_new_tokens=4)
    predict_records(records, checkpoint, config=cfg, progress=False)
    clean = list(seen)
    seen.clear()
    predict_records(records, checkpoint, config=cfg, progress=False, perturbation="low_resolution")
    assert [len(s) for s in seen] == [len(s) for s in clean] == [1, 2, 0]
    for record, clean_views, perturbed_views in zip(records, clean, seen):
        expected = [perturb(im, "low_resolution") for im in load_study_input(record).images]
        for c, p, e in zip(clean_views, perturbed_views, expected):
            assert p.shape == c.shape  # same size: the image grid is unchanged
            assert not np.array_equal(p, c)
            np.testing.assert_array_equal(p, np.asarray(e, dtype=np.float64))


def test_load_study_input_perturbs_every_view_and_refuses_unknown_names(dataset):
    record = _records(dataset)[1]
    clean = load_study_input(record)
    noisy = load_study_input(record, perturbation="noise")
    assert len(noisy.images) == len(clean.images) == 2
    for c, n in zip(clean.images, noisy.images):
        assert c.size == n.size and not np.array_equal(np.asarray(c), np.asarray(n))
    with pytest.raises(ValueError, match="blur.*jpeg"):
        load_study_input(record, perturbation="blur")


def test_cli_records_the_perturbation_in_the_json(dataset, model_dir, tmp_path, monkeypatch):
    checkpoint = Drafter(str(model_dir), device="cpu").checkpoint("echo")
    seen = _spy_encode(checkpoint, monkeypatch)
    monkeypatch.setattr(Drafter, "checkpoint", lambda self, sampler: checkpoint)
    common = ["--data", str(dataset), "--split", "test", "--model", str(model_dir), "--max-new-tokens", "4",
              "--no-progress"]
    assert main([*common, "--perturb", "gamma_1.4", "--json", str(tmp_path / "p.json")]) == 0
    perturbed = list(seen)
    seen.clear()
    assert main([*common, "--json", str(tmp_path / "c.json")]) == 0
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["perturbation"] == "gamma_1.4" and data["run"]["perturbation"] == "gamma_1.4"
    assert json.loads((tmp_path / "c.json").read_text())["perturbation"] is None
    # gamma 1.4 darkens the mid-tones of every view
    for p_views, c_views in zip(perturbed, seen):
        for p, c in zip(p_views, c_views):
            assert p.shape == c.shape and p.mean() < c.mean()


def test_unknown_perturbation_is_a_usage_error_naming_the_choices(dataset, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--data", str(dataset), "--perturb", "blur"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "blur" in err and all(name in err for name in PERTURBATIONS)


def test_perturb_with_a_baseline_is_refused(dataset, capsys):
    assert main(["--data", str(dataset), "--baseline", "majority", "--train-split", "test",
                 "--perturb", "jpeg"]) == 2
    assert "--perturb" in capsys.readouterr().err
