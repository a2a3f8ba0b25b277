"""``echo-report --batch``: study discovery, de-identified rows, batching parity, resume after kill -9, readers
that skip error rows, and the two-process ``accelerate launch`` split."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import accelerate_launch, synthetic_cxr

from echo_model.batch import BatchOptions, prepare_study, read_finished, run_batch
from echo_model.cli import main
from echo_model.data.records import read_jsonl
from echo_model.device import shares_batches
from echo_model.drafting import Drafter
from echo_model.imaging.synthetic import dicom_bytes, synthetic_dicom_dataset
from echo_model.sampling import SamplerConfig
from echo_model.studies import StudyFiles, discover_studies, load_or_create_key, study_key

ROOT = Path(__file__).parent.parent
TOKENS = "16"


def _dicom(path: Path, *, uid: str, view: str | None, seed: int, modality: str = "DX") -> None:
    pixels = np.asarray(synthetic_cxr(seed, (128, 120)), dtype=np.uint8)
    attrs: dict[str, object] = {"StudyInstanceUID": uid, "Modality": modality, "PatientName": "DOE^JANE"}
    if view is not None:
        attrs["ViewPosition"] = view
    path.write_bytes(dicom_bytes(synthetic_dicom_dataset(pixels, attributes=attrs)))


@pytest.fixture
def night(tmp_path) -> Path:
    """A night's folder: a DICOM study of two views (lateral file first by name), a CT (skipped), two PNG
    folders (one of two views), a notes file (skipped), and an unreadable PNG study."""
    root = tmp_path / "night"
    (root / "dicom").mkdir(parents=True)
    _dicom(root / "dicom" / "a_lateral.dcm", uid="1.2.3.4", view="LL", seed=1)
    _dicom(root / "dicom" / "b_frontal.dcm", uid="1.2.3.4", view="PA", seed=2)
    ct = root / "dicom" / "c_ct.dcm"
    _dicom(ct, uid="1.2.3.99", view=None, seed=3, modality="CT")
    ct.write_bytes(ct.read_bytes()[:-500])  # pixels cut short: a skipped CT is never decoded
    for name, seeds in (("smith_john", (4, 5)), ("p2", (6,))):
        (root / name).mkdir()
        for i, seed in enumerate(seeds):
            synthetic_cxr(seed, (256, 240)).save(root / name / f"view{i}.png")
    (root / "notes.txt").write_text("not an image")
    (root / "broken").mkdir()
    (root / "broken" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return root


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- discovery
def test_discovery_groups_dicom_by_study_frontal_first_and_skips_other_modalities(night):
    found = discover_studies([str(night)])
    by_id = {s.identity: s for s in found.studies}
    dicom = by_id["uid:1.2.3.4"]
    assert [Path(p).name for p in dicom.paths] == ["b_frontal.dcm", "a_lateral.dcm"]
    assert dicom.views == ("pa", "lateral")
    assert [Path(p).name for p in by_id[f"path:{night / 'smith_john'}"].paths] == ["view0.png", "view1.png"]
    assert len(found.studies) == 4  # dicom, smith_john, p2, broken
    assert found.skipped == {"DICOM modality CT, not a radiograph": 1, "not a PNG, JPEG or DICOM file": 1}
    per_file = discover_studies([str(night / "smith_john"), str(night / "p2")], one_per_file=True)
    assert len(per_file.studies) == 3
    with pytest.raises(ValueError, match="nowhere: no such file or folder"):
        discover_studies(["nowhere"])


def test_study_keys_are_keyed_hashes_stable_under_one_key(tmp_path):
    key = load_or_create_key(tmp_path / "k", create=True)
    assert load_or_create_key(tmp_path / "k", create=False) == key
    assert os.stat(tmp_path / "k").st_mode & 0o077 == 0  # readable by its owner only
    other = load_or_create_key(tmp_path / "k2", create=True)
    assert study_key(key, "uid:1.2.3") == study_key(key, "uid:1.2.3") != study_key(other, "uid:1.2.3")
    assert "1.2.3" not in study_key(key, "uid:1.2.3")


# ---------------------------------------------------------------------------------------------- the command
def test_batch_rows_are_deidentified_records_with_error_rows(model_dir, night, tmp_path, capsys):
    out = tmp_path / "drafts.jsonl"
    code = main(["--model", str(model_dir), "--batch", str(night), "--out", str(out), "--batch-size", "2",
                 "--max-new-tokens", TOKENS])
    assert code == 3  # a CT and a notes file skipped, one study unreadable
    err = capsys.readouterr().err
    assert "4 studies found" in err and "3 drafted" in err and "1 not readable" in err
    text = out.read_text()
    for secret in ("smith_john", "view0", "1.2.3.4", "DOE", str(tmp_path), "x.png", ".dcm"):
        assert secret not in text, secret
    rows = _rows(out)
    assert len(rows) == 4 and len({r["id"] for r in rows}) == 4
    errors = [r for r in rows if "error" in r]
    assert len(errors) == 1 and "view 1" in errors[0]["error"] and "report" not in errors[0]
    drafts = [r for r in rows if "error" not in r]
    assert all(r["schema"] == "echo.study/1" and r["images"] == [] for r in drafts)
    dicom = next(r for r in drafts if r["draft"]["views"] == ["pa", "lateral"])
    key = load_or_create_key(str(out) + ".key", create=False)
    assert dicom["id"] == study_key(key, "uid:1.2.3.4")
    for r in drafts:
        d = r["draft"]
        assert d["figures"]["forward_passes"] >= 1 and d["figures"]["tokens"] >= 1 and d["batch_size"] == 2
        assert isinstance(d["warnings"], list) and d["study"] is None
    records = list(read_jsonl(out))  # the record reader accepts the drafts and skips the error row
    assert len(records) == 3 and {r.draft.report for r in records} == {r["draft"]["report"] for r in drafts}


def test_keep_paths_writes_paths_and_uids(model_dir, night, tmp_path):
    out = tmp_path / "kept.jsonl"
    assert main(["--model", str(model_dir), "--batch", str(night / "dicom"), "--out", str(out), "--keep-paths",
                 "--max-new-tokens", TOKENS]) == 3  # the CT is skipped
    (row,) = _rows(out)
    assert row["draft"]["study"] == "1.2.3.4"
    assert [Path(i["path"]).name for i in row["images"]] == ["b_frontal.dcm", "a_lateral.dcm"]


def test_echo_eval_reads_a_batch_output_and_counts_error_rows(model_dir, night, tmp_path, capsys):
    from echo_eval.eval_cli import load_split
    from echo_eval.eval_cli import main as eval_main

    out = tmp_path / "drafts.jsonl"
    main(["--model", str(model_dir), "--batch", str(night), "--out", str(out), "--max-new-tokens", TOKENS])
    records = load_split(str(out), "all")
    assert len(records) == 3 and all(r.source == "echo-report --batch" for r in records)
    capsys.readouterr()
    scores = tmp_path / "scores.json"
    assert eval_main(["--data", str(out), "--split", "all", "--baseline", "majority", "--train-split", "all",
                      "--json", str(scores), "--no-progress", "--n-resamples", "10"]) == 0
    assert json.loads(scores.read_text())["n"] == 3
    assert "1 study not drafted (error row) skipped" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--batch", "x"], "--batch needs --out"),
    (["--resume", "a.png"], "--resume needs --batch"),
    (["--batch", "x", "--out", "o.jsonl", "--json"], "--json is for one study"),
    (["--batch", "x", "--out", "o.jsonl", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ([], "give the image files of one study"),
])
def test_usage_errors_are_one_line_with_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_folder_of_too_many_images_is_an_error_row_and_an_empty_folder_a_usage_error(model_dir, tmp_path, capsys):
    crowd = tmp_path / "crowd" / "patient_x"
    crowd.mkdir(parents=True)
    for i in range(9):
        synthetic_cxr(i, (64, 64)).save(crowd / f"img{i}.png")
    out = tmp_path / "d.jsonl"
    assert main(["--model", str(model_dir), "--batch", str(tmp_path / "crowd"), "--out", str(out)]) == 3
    (row,) = _rows(out)
    assert "at most 8 views, got 9" in row["error"] and "patient_x" not in out.read_text()
    (tmp_path / "empty").mkdir()
    assert main(["--model", str(model_dir), "--batch", str(tmp_path / "empty"), "--out", str(tmp_path / "e.jsonl")]) == 2
    assert "no PNG, JPEG or DICOM files there" in capsys.readouterr().err


def test_any_failure_reading_a_study_is_its_error_with_views_for_paths(tmp_path):
    png = tmp_path / "smith_john" / "frontal.png"
    png.parent.mkdir()
    synthetic_cxr(1, (64, 64)).save(png)
    study = StudyFiles(identity=f"path:{png.parent}", paths=(str(png),), views=("unknown",))

    def encode(images):
        raise RuntimeError(f"cannot resize {png} (frontal.png)")

    prep = prepare_study(study, "k", encode, keep_paths=False)
    assert prep.prompt is None and prep.error == "cannot resize view 1 (view 1)"
    assert prepare_study(study, "k", encode, keep_paths=True).error == f"cannot resize {png} (frontal.png)"


def test_existing_output_needs_resume(model_dir, night, tmp_path, capsys):
    out = tmp_path / "drafts.jsonl"
    out.write_text("")
    assert main(["--model", str(model_dir), "--batch", str(night / "p2"), "--out", str(out)]) == 2
    assert "add --resume" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- batching
def _studies(root: Path, n: int) -> Path:
    for i in range(n):
        (root / f"s{i}").mkdir(parents=True)
        synthetic_cxr(10 + i, (200 + 8 * i, 240)).save(root / f"s{i}" / "f.png")
    return root


def test_a_batch_of_eight_costs_the_model_calls_of_its_longest_study(model_dir, tmp_path):
    root = _studies(tmp_path / "in", 8)
    drafter = Drafter(str(model_dir), device="cpu")
    hf = drafter.checkpoint("echo").model.model
    calls = [0]
    handle = hf.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    config = SamplerConfig(max_new_tokens=24)
    try:
        calls[0] = 0
        run_batch([str(root)], out=tmp_path / "b8.jsonl", drafter=drafter, one_per_file=False,
                  options=BatchOptions(batch_size=8, config=config))
        batched = calls[0]
        singles = []
        for i in range(8):
            calls[0] = 0
            run_batch([str(root / f"s{i}")], out=tmp_path / f"one{i}.jsonl", key_file=tmp_path / "b8.jsonl.key",
                      drafter=drafter, options=BatchOptions(batch_size=1, config=config))
            singles.append(calls[0])
    finally:
        handle.remove()
    assert batched == max(singles) < sum(singles)
    b8 = {r["id"]: r["draft"]["report"] for r in _rows(tmp_path / "b8.jsonl")}
    one = {r["id"]: r["draft"]["report"] for i in range(8) for r in _rows(tmp_path / f"one{i}.jsonl")}
    assert b8 == one and len(set(b8.values())) > 1


def test_int8_weights_draft_one_study_at_a_time_so_no_draft_depends_on_its_batch(model_dir, tmp_path, capsys):
    root = _studies(tmp_path / "in", 3)
    drafter = Drafter(str(model_dir), device="cpu", quantize="int8")
    rows: list[int] = []
    hf = drafter.checkpoint("echo").model.model
    handle = hf.register_forward_pre_hook(lambda _m, _a, kw: rows.append(int(kw["input_ids"].shape[0])),
                                          with_kwargs=True)
    config = SamplerConfig(max_new_tokens=24)
    try:
        report = run_batch([str(root)], out=tmp_path / "b8.jsonl", drafter=drafter, progress=sys.stderr,
                           options=BatchOptions(batch_size=8, config=config))
        batched = list(rows)
        singles = []
        for i in range(3):
            rows.clear()
            run_batch([str(root / f"s{i}")], out=tmp_path / f"one{i}.jsonl", key_file=tmp_path / "b8.jsonl.key",
                      drafter=drafter, options=BatchOptions(batch_size=1, config=config))
            singles.append(len(rows))
    finally:
        handle.remove()
    assert set(batched) == {1} and len(batched) == sum(singles)  # every model call decoded one study
    assert len(report.notes) == 1 and "one study at a time (--batch-size 1, not 8)" in report.notes[0]
    assert "note: --quantize int8" in capsys.readouterr().err
    b8 = {r["id"]: r["draft"]["report"] for r in _rows(tmp_path / "b8.jsonl")}
    one = {r["id"]: r["draft"]["report"] for i in range(3) for r in _rows(tmp_path / f"one{i}.jsonl")}
    assert b8 == one and len(b8) == 3


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_dynamic_int8_scales_a_layer_input_over_the_whole_batch():
    """Why int8 drafts do not share batches: one row's int8 output changes with its companion, fp32's does not."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 64)
    int8 = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)
    row = torch.randn(1, 4, 64)  # (1, q, D)
    loud = 50 * torch.randn(1, 4, 64)  # a companion whose inputs span a much wider range
    with torch.inference_mode():
        alone, together = int8(row), int8(torch.cat([row, loud]))[:1]  # (1, q, D) each
        assert not torch.equal(alone, together)
        assert torch.allclose(linear(row), linear(torch.cat([row, loud]))[:1], atol=1e-6)
    assert shares_batches("none") and not shares_batches("int8")
    with pytest.raises(ValueError, match="int4"):
        shares_batches("int4")


# ---------------------------------------------------------------------------------------------- interruption
def _cli(model_dir: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "echo_model.cli", "--model", str(model_dir), "--batch", str(root), "--out", str(out),
            "--max-new-tokens", TOKENS, "--device", "cpu", *extra]


#: ``python -m echo_model.cli ARGS`` with Ctrl-C raising KeyboardInterrupt, as in a terminal, also where the test
#: runner was started with SIGINT ignored (a shell starts a background job so), which every child inherits.
_WITH_CTRL_C = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                "sys.argv[0] = 'echo-report'; runpy.run_module('echo_model.cli', run_name='__main__')")


def _interrupt(cmd: list[str], out: Path, *, after_rows: int, sig: signal.Signals, env: dict) -> subprocess.Popen:
    """Start the CLI, wait until ``out`` holds ``after_rows`` lines, send ``sig``; the process is left to end."""
    if cmd[1:3] == ["-m", "echo_model.cli"]:
        cmd = [cmd[0], "-c", _WITH_CTRL_C, *cmd[3:]]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= after_rows:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    return proc


@pytest.mark.slow
def test_resume_after_kill_9_loses_and_doubles_nothing(model_dir, tmp_path):
    root = _studies(tmp_path / "in", 10)
    out = tmp_path / "drafts.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    _interrupt(_cli(model_dir, root, out, "--batch-size", "1"), out, after_rows=3, sig=signal.SIGKILL, env=env).communicate()
    before = len(_rows(out))
    assert 3 <= before < 10  # killed mid-run
    with out.open("ab") as fh:  # and a power cut in the middle of a line
        fh.write(b'{"schema": "echo.study/1", "id": "abc", "find')
    assert subprocess.run(_cli(model_dir, root, out, "--resume", "--batch-size", "4"), check=False, env=env,
                          capture_output=True).returncode == 0
    rows = _rows(out)
    assert len(rows) == 10 and len({r["id"] for r in rows}) == 10
    whole = tmp_path / "whole.jsonl"
    shutil.copy(str(out) + ".key", str(whole) + ".key")
    assert main(["--model", str(model_dir), "--batch", str(root), "--out", str(whole), "--max-new-tokens", TOKENS]) == 0
    assert {r["id"]: r["draft"]["report"] for r in rows} == {r["id"]: r["draft"]["report"] for r in _rows(whole)}


@pytest.mark.slow
def test_ctrl_c_leaves_whole_lines_and_says_how_to_resume(model_dir, tmp_path):
    root = _studies(tmp_path / "in", 10)
    out = tmp_path / "drafts.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = _interrupt(_cli(model_dir, root, out, "--batch-size", "1"), out, after_rows=2, sig=signal.SIGINT, env=env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in err
    text = out.read_text()
    assert text.endswith("\n") and 2 <= len(_rows(out)) < 10  # whole lines, all of them JSON


def test_resume_cuts_an_unterminated_last_line(tmp_path):
    out = tmp_path / "d.jsonl"
    out.write_bytes(b'{"id": "a", "error": "x"}\n{"id": "b", "fin')
    assert read_finished(out) == {"a": True}
    assert out.read_bytes() == b'{"id": "a", "error": "x"}\n'


@pytest.mark.slow
def test_two_processes_split_the_studies_and_merge_one_file(model_dir, tmp_path):
    launcher = shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate launcher is not on PATH")
    root = _studies(tmp_path / "in", 5)
    out = tmp_path / "two.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    accelerate_launch(launcher, ["-m", *_cli(model_dir, root, out, "--batch-size", "2")[2:]], env=env)
    assert not list(tmp_path.glob("two.jsonl.part*"))
    rows = _rows(out)
    one = tmp_path / "one.jsonl"
    shutil.copy(str(out) + ".key", str(one) + ".key")
    assert main(["--model", str(model_dir), "--batch", str(root), "--out", str(one), "--max-new-tokens", TOKENS,
                 "--batch-size", "2"]) == 0
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in _rows(one))  # none lost, none doubled
    assert {r["id"]: r["draft"]["report"] for r in rows} == {r["id"]: r["draft"]["report"] for r in _rows(one)}
