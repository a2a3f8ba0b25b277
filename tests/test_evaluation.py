"""echo-eval and echo_eval.evaluation, end to end on a hand-written JSONL set and a saved tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import synthetic_cxr

from echo_eval.eval_cli import main
from echo_eval.evaluation import (
    _PAIRED,
    PREDICTION_FIELDS,
    StudyPrediction,
    compare_predictions,
    pair_predictions,
    predict_records,
    read_predictions,
    score_predictions,
    write_predictions,
)
from echo_eval.metrics import evaluate_reports
from echo_model.data.records import StudyRecord, write_jsonl
from echo_model.sampling import SamplerConfig

NORMAL = ("The heart is normal in size. The lungs are clear.", "No acute cardiopulmonary abnormality.")
EFFUSION = (
    "There is a small left pleural effusion with adjacent atelectasis.",
    "Small left pleural effusion.",
)
CARDIO = ("Mild cardiomegaly. Pulmonary vascular congestion without frank edema.", "Mild cardiomegaly.")
SPINE = ("Degenerative changes of the thoracic spine. No pneumothorax.", "No acute disease.")

# id, split, (findings, impression), images ("ok" = synthetic PNG, "missing" = no such file), indication
STUDIES = [
    ("t1", "test", NORMAL, ["ok"], None),
    ("t2", "test", EFFUSION, ["ok", "ok"], "cough and fever"),
    ("t3", "test", CARDIO, [], "dyspnoea"),
    ("t4", "test", SPINE, ["missing"], "back pain"),
    ("t5", "test", NORMAL, ["ok"], None),
    ("r1", "train", NORMAL, [], None),
    ("r2", "train", NORMAL, [], None),
    ("r3", "train", EFFUSION, [], None),
]
N_TEST = sum(1 for s in STUDIES if s[1] == "test")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A study-record JSONL: synthetic images (relative paths), one missing image, text-only studies."""
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    records = []
    for n, (sid, split, (findings, impression), images, indication) in enumerate(STUDIES):
        refs = []
        for k, kind in enumerate(images):
            rel = f"images/{sid}_{k}.png"
            if kind == "ok":
                synthetic_cxr(10 * n + k, (120, 100)).save(root / rel)
            refs.append({"path": rel, "view": "frontal" if k == 0 else "lateral"})
        records.append(
            StudyRecord.from_dict(
                {
                    "id": sid,
                    "findings": findings,
                    "impression": impression,
                    "images": refs,
                    "indication": indication,
                    "split": split,
                    "source": "handwritten",
                }
            )
        )
    path = root / "studies.jsonl"
    write_jsonl(records, path)
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _run(args: list[str]) -> int:
    return main([*args, "--no-progress"])


@pytest.fixture(scope="module")
def model_run(dataset, model_dir, tmp_path_factory):
    """One model evaluation over the test split (shared by several tests: drafting is the slow part)."""
    out = tmp_path_factory.mktemp("run")
    rc = _run(
        [
            "--data",
            str(dataset),
            "--split",
            "test",
            "--model",
            str(model_dir),
            "--sampler",
            "echo",
            "--max-new-tokens",
            "8",
            "--batch-size",
            "2",
            "--json",
            str(out / "m.json"),
            "--predictions",
            str(out / "p.jsonl"),
        ]
    )
    return rc, out / "m.json", out / "p.jsonl"


def test_model_run_writes_metrics_and_one_prediction_per_study(model_run, capsys):
    rc, metrics_path, preds_path = model_run
    assert rc == 0
    data = json.loads(metrics_path.read_text())
    for key in ("n", "rougeL", "bleu4", "ce_f1_5", "cider", "tokens_per_forward_mean", "seconds_mean", "run"):
        assert key in data, key
    assert data["n"] == N_TEST
    assert data["run"]["sampler"] == "echo" and data["run"]["split"] == "test"
    lines = _lines(preds_path)
    assert len(lines) == data["n"]
    assert [x["id"] for x in lines] == [s[0] for s in STUDIES if s[1] == "test"]
    for line in lines:
        for key in PREDICTION_FIELDS:
            assert key in line, key
        assert line["sampler"] == "echo" and line["tokens"] >= 1 and line["forward_passes"] >= 1
    by_id = {x["id"]: x for x in lines}
    assert by_id["t2"]["images"] == 2
    # a study whose image file is missing is drafted text-only instead of ending the run
    assert by_id["t4"]["images"] == 0 and by_id["t4"]["missing_images"] == 1
    assert by_id["t3"]["reference"] == "Findings: " + CARDIO[0] + " Impression: " + CARDIO[1]
    assert data["run"]["images_missing"] == 1 and data["run"]["text_only_studies"] == 2


def test_markdown_table_is_printed(dataset, capsys):
    assert _run(["--data", str(dataset), "--split", "test", "--baseline", "majority"]) == 0
    out = capsys.readouterr().out
    assert "| ROUGE-L |" in out and "| BLEU-4 |" in out and "| CE F1 (5, micro) |" in out


def test_limit_takes_the_first_studies(dataset, model_dir, tmp_path):
    assert (
        _run(
            [
                "--data",
                str(dataset),
                "--model",
                str(model_dir),
                "--limit",
                "2",
                "--max-new-tokens",
                "4",
                "--json",
                str(tmp_path / "m.json"),
                "--predictions",
                str(tmp_path / "p.jsonl"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 2
    assert [x["id"] for x in _lines(tmp_path / "p.jsonl")] == ["t1", "t2"]


def test_majority_baseline_predicts_the_most_frequent_training_report(dataset, tmp_path):
    assert (
        _run(
            [
                "--data",
                str(dataset),
                "--baseline",
                "majority",
                "--train-split",
                "train",
                "--json",
                str(tmp_path / "m.json"),
                "--predictions",
                str(tmp_path / "p.jsonl"),
            ]
        )
        == 0
    )
    lines = _lines(tmp_path / "p.jsonl")
    assert len(lines) == N_TEST
    assert {x["prediction"] for x in lines} == {f"Findings: {NORMAL[0]} Impression: {NORMAL[1]}"}
    assert all(x["sampler"] == "majority" and x["tokens"] is None for x in lines)
    data = json.loads((tmp_path / "m.json").read_text())
    assert "tokens_per_forward_mean" not in data  # no model, no cost figures
    # t1 and t5 are normal studies: the template matches them exactly, the others not
    assert 0 < data["rougeL"] < 1


def test_compare_gives_paired_intervals(dataset, model_run, tmp_path, capsys):
    _, _, model_preds = model_run
    capsys.readouterr()
    assert (
        _run(
            [
                "--data",
                str(dataset),
                "--baseline",
                "majority",
                "--compare",
                str(model_preds),
                "--n-resamples",
                "200",
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    cmp = json.loads((tmp_path / "m.json").read_text())["comparison"]
    assert cmp["n"] == N_TEST and cmp["n_resamples"] == 200
    assert set(cmp["metrics"]) == {"rougeL", "bleu4", "ce_f1_5"}
    for m in cmp["metrics"].values():
        assert m["delta"] == pytest.approx(m["a"] - m["b"])
        assert m["low"] <= m["delta"] + 1e-12 and m["delta"] <= m["high"] + 1e-12
    out = capsys.readouterr().out
    assert "paired bootstrap" in out and "95 % interval" in out


def test_compare_with_a_limited_run_pairs_on_its_ids(dataset, model_run, tmp_path):
    _, _, model_preds = model_run
    assert (
        _run(
            [
                "--data",
                str(dataset),
                "--baseline",
                "majority",
                "--limit",
                "3",
                "--compare",
                str(model_preds),
                "--n-resamples",
                "50",
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "m.json").read_text())["comparison"]["n"] == 3


def test_bad_split_and_bad_predictions_file_exit_2_with_a_message(dataset, tmp_path, capsys):
    assert _run(["--data", str(dataset), "--split", "val", "--baseline", "majority"]) == 2
    err = capsys.readouterr().err
    assert "echo-eval: error:" in err and "'val'" in err and "'test'" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "t1", "prediction": "x", "reference": "y"}\nnot json\n')
    assert _run(["--data", str(dataset), "--baseline", "majority", "--compare", str(bad)]) == 2
    assert "bad.jsonl: line 2" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ library
def _pred(sid: str, prediction: str, reference: str) -> StudyPrediction:
    return StudyPrediction(id=sid, prediction=prediction, reference=reference, sampler="x", model="m")


REPORTS = [" ".join(s[2]) for s in STUDIES]


def test_bootstrap_statistics_reproduce_the_corpus_metrics():
    preds = REPORTS[3:] + REPORTS[:3]
    full = evaluate_reports(preds, REPORTS)
    for metric, (stats_fn, corpus_fn) in _PAIRED.items():
        assert corpus_fn(stats_fn(preds, REPORTS)) == pytest.approx(full[metric], abs=1e-12), metric


def test_identical_runs_have_zero_difference():
    a = [_pred(f"s{i}", p, r) for i, (p, r) in enumerate(zip(REPORTS[::-1], REPORTS))]
    cmp = compare_predictions(a, list(reversed(a)), n_resamples=100)
    for m in cmp.metrics.values():
        assert m.delta == 0.0 and m.low == 0.0 and m.high == 0.0 and not m.excludes_zero()


def test_a_better_run_has_an_interval_above_zero():
    good = [_pred(f"s{i}", r, r) for i, r in enumerate(REPORTS)]
    bad = [_pred(f"s{i}", "Sternotomy wires are intact.", r) for i, r in enumerate(REPORTS)]
    cmp = compare_predictions(good, bad, metrics=("rougeL",), n_resamples=200)
    assert cmp.metrics["rougeL"].delta > 0.5 and cmp.metrics["rougeL"].excludes_zero()


def test_pairing_refuses_missing_ids_and_different_references():
    a = [_pred("s1", "x", "ref one"), _pred("s2", "y", "ref two")]
    with pytest.raises(ValueError, match="s2"):
        pair_predictions(a, [_pred("s1", "z", "ref one")])
    with pytest.raises(ValueError, match="different references"):
        pair_predictions(a, [_pred("s1", "z", "ref one"), _pred("s2", "z", "another")])
    with pytest.raises(ValueError, match="no paired bootstrap"):
        compare_predictions(a, a, metrics=("meteor",))


def test_predictions_round_trip_and_duplicates_are_refused(tmp_path):
    preds = [
        _pred("s1", "a", "b"),
        StudyPrediction(
            "s2",
            "c",
            "d",
            "echo",
            "m",
            tokens=3,
            forward_passes=1,
            tokens_per_forward=3.0,
            seconds=0.5,
            images=2,
        ),
    ]
    path = tmp_path / "p.jsonl"
    assert write_predictions(preds, path) == 2
    assert read_predictions(path) == preds
    path.write_text(path.read_text() + json.dumps(preds[0].to_json()) + "\n")
    with pytest.raises(ValueError, match="line 3.*duplicate study id 's1'"):
        read_predictions(path)


def test_batches_give_the_single_study_predictions(dataset, checkpoint):
    from echo_model.data import load_dataset

    records = [r for r in load_dataset(dataset, split="test")][:3]
    cfg = SamplerConfig(max_new_tokens=8)
    one = predict_records(records, checkpoint, config=cfg, batch_size=1, progress=False)
    three = predict_records(records, checkpoint, config=cfg, batch_size=3, progress=False)
    assert [p.prediction for p in one] == [p.prediction for p in three]


def test_text_only_studies_carry_their_indication(dataset, checkpoint, monkeypatch):
    from echo_model.data import load_dataset

    seen: list[tuple[int, str | None]] = []
    encode = checkpoint.processor.encode

    def spy(images, *, indication=None, lang="en"):
        seen.append((len(images), indication))
        return encode(images, indication=indication, lang=lang)

    monkeypatch.setattr(checkpoint.processor, "encode", spy)
    records = [r for r in load_dataset(dataset, split="test") if r.id in ("t3", "t4")]
    predict_records(records, checkpoint, config=SamplerConfig(max_new_tokens=4), progress=False)
    assert seen == [(0, "dyspnoea"), (0, "back pain")]


# ------------------------------------------------------------------- normalized references, baselines, checks
@pytest.fixture(scope="module")
def normalized_dataset(tmp_path_factory) -> Path:
    """Text-only records whose reports were normalized by an adapter: ``raw_report`` keeps the source."""
    from echo_model.data.normalize import normalize_sections

    root = tmp_path_factory.mktemp("normalized")
    # the raw normal train report is most frequent as written; the normalized effusion report becomes most
    # frequent once the de-identification mask of one copy is removed and both normalize to the same text
    effusion_b = (EFFUSION[0] + " XXXX XXXX.", EFFUSION[1])
    rows = [("n1", "test", NORMAL), ("n2", "test", EFFUSION), ("n3", "test", CARDIO),
            ("a1", "train", NORMAL), ("a2", "train", NORMAL), ("a3", "train", EFFUSION),
            ("a4", "train", EFFUSION), ("a5", "train", effusion_b)]
    records = []
    for sid, split, (findings, impression) in rows:
        norm = normalize_sections(findings, impression)
        records.append(StudyRecord.from_dict({
            "id": sid, "findings": norm.findings, "impression": norm.impression, "split": split,
            "source": "handwritten", "raw_report": f"Findings: {findings} Impression: {impression}"}))
    path = root / "studies.jsonl"
    write_jsonl(records, path)
    return path


def _baseline(dataset: Path, kind: str, tmp_path: Path) -> tuple[dict, list[dict]]:
    assert _run(["--data", str(dataset), "--baseline", kind, "--json", str(tmp_path / f"{kind}.json"),
                 "--predictions", str(tmp_path / f"{kind}.jsonl")]) == 0
    return json.loads((tmp_path / f"{kind}.json").read_text()), _lines(tmp_path / f"{kind}.jsonl")


def test_the_three_baselines_predict_what_they_say(normalized_dataset, tmp_path):
    from echo_model.data.normalize import normalize_sections
    from echo_model.report_check import check_report

    _, majority = _baseline(normalized_dataset, "majority", tmp_path)
    assert {x["prediction"] for x in majority} == {f"Findings: {NORMAL[0]} Impression: {NORMAL[1]}"}
    _, frequent = _baseline(normalized_dataset, "frequent-normalized", tmp_path)
    frequent_text = {x["prediction"] for x in frequent}
    assert frequent_text == {normalize_sections(*EFFUSION).text} != {normalize_sections(*NORMAL).text}
    data, template = _baseline(normalized_dataset, "normal-template", tmp_path)
    assert {x["prediction"] for x in template} == {normalize_sections("", "").text}
    assert check_report(template[0]["prediction"], normalized=True).well_formed
    assert data["well_formed"] == 1.0 and data["run"]["sampler"] == "normal-template"


def test_scores_against_normalized_and_raw_references(normalized_dataset, tmp_path, capsys):
    data, preds = _baseline(normalized_dataset, "normal-template", tmp_path)
    assert "raw_reference" in data and data["raw_reference"]["n"] == data["n"] == 3
    # the normalized normal template is closer to the normalized references than to the raw ones
    assert data["rougeL"] > data["raw_reference"]["rougeL"]
    assert all(x["raw_reference"].startswith("Findings: ") and x["raw_reference"] != x["reference"] for x in preds)
    assert "against the references as written (raw)" in capsys.readouterr().out


def test_reference_kinds_follow_the_records(dataset, tmp_path):
    data, preds = _baseline(dataset, "majority", tmp_path)
    assert "raw_reference" not in data  # clinician-style record files are never normalized
    assert all(x["raw_reference"] is None for x in preds)


def test_every_model_prediction_carries_its_report_check(model_run):
    from echo_model.report_check import check_report

    _, metrics_path, preds_path = model_run
    lines = _lines(preds_path)
    for line in lines:
        assert line["warnings"] == check_report(line["prediction"], normalized=False).warnings
    share = sum(1 for x in lines if not x["warnings"]) / len(lines)
    assert json.loads(metrics_path.read_text())["well_formed"] == pytest.approx(share)
    assert share < 1  # 8 tokens of a random tiny model never make a whole report


def test_fallback_redrafts_failed_studies_costed_with_every_attempt(dataset, checkpoint):
    from echo_model.data import load_dataset
    from echo_model.report_check import check_report

    records = [r for r in load_dataset(dataset, split="test")][:3]
    cfg = SamplerConfig(max_new_tokens=8)
    alone = {name: predict_records(records, checkpoint, sampler=name, config=cfg, progress=False)
             for name in ("echo", "ar")}
    assert all(p.warnings for p in alone["echo"])  # the tiny random model: every draft fails the check

    kept = predict_records(records, checkpoint, sampler="echo", config=cfg, progress=False,
                           fallbacks=[("ar", checkpoint)])

    for p, first, ar in zip(kept, alone["echo"], alone["ar"]):
        assert (p.sampler, p.prediction, p.replaced) == ("ar", ar.prediction, ["echo"])
        assert p.forward_passes == first.forward_passes + ar.forward_passes
        assert p.warnings == list(check_report(ar.prediction, normalized=False).warnings)
    scored = score_predictions(kept)
    assert scored["redrafted"] == 1.0 and "redrafted" not in score_predictions(alone["echo"])
    assert all(p.replaced is None for p in alone["echo"])


def test_fallback_is_refused_with_a_baseline_and_with_the_samplers_own_name(dataset, capsys):
    assert main(["--data", str(dataset), "--baseline", "majority", "--fallback", "teacher"]) == 2
    assert "--fallback teacher re-drafts a model's drafts; --baseline majority drafts nothing" in capsys.readouterr().err
    assert main(["--data", str(dataset), "--sampler", "ar", "--fallback", "ar"]) == 2
    assert "names the draft's own sampler 'ar'" in capsys.readouterr().err
