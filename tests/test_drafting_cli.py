"""The drafting service and the echo-report command line, end to end on a saved tiny checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest

from echo_model.cli import main
from echo_model.drafting import Drafter
from echo_model.report_check import check_report
from echo_model.sampling import SamplerConfig
from conftest import synthetic_cxr


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "frontal.png"
    synthetic_cxr(3, (256, 240)).save(path)
    return path


def test_json_mode(model_dir, image_file, capsys):
    assert main(["--model", str(model_dir), "--json", "--max-new-tokens", "24", str(image_file)]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("report", "findings", "impression", "blocks", "block_tokens", "sampler", "model", "model_revision",
                "tokens", "forward_passes", "model_calls", "tokens_per_forward", "seconds", "first_block_seconds", "warnings"):
        assert key in out, key
    assert out["sampler"] == "echo"
    assert out["forward_passes"] == len(out["blocks"]) == len(out["block_tokens"])
    assert out["model"] == str(model_dir)


def test_text_mode_and_sampler_choice(model_dir, image_file, capsys):
    assert main(["--model", str(model_dir), "--sampler", "teacher", "--indication", "cough", "--max-new-tokens", "16", str(image_file)]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("Findings:") and "\nImpression:" in cap.out
    assert "[teacher |" in cap.err and "not for clinical use" in cap.err


def test_bad_input_exits_non_zero_with_message(model_dir, tmp_path, capsys):
    bad = tmp_path / "scan.png"
    bad.write_text("<html>not an image</html>")
    assert main(["--model", str(model_dir), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("echo-report: error:") and "scan.png" in err
    assert main(["--model", str(tmp_path / "missing"), str(bad)]) != 0


def test_redraft_keeps_the_prefix(model_dir):
    drafter = Drafter(str(model_dir))
    img = synthetic_cxr(1)
    cfg = SamplerConfig(max_new_tokens=12, fixed_length=True)
    draft = drafter.draft([img], config=cfg, prefix="Findings: The lungs are clear.")
    assert draft.report.startswith("Findings: The lungs are clear.")
    assert draft.settings["prefix"] == "Findings: The lungs are clear."
    assert draft.result.tokens == 12


def test_embedded_checkpoint_runs(image_file, capsys):
    assert main(["--json", "--fallback", "none", "--max-new-tokens", "16", str(image_file)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "embedded:student" and out["replaced"] == []
    assert 1 <= out["tokens"] <= 16


def test_the_embedded_students_failed_draft_is_drafted_again_by_default(image_file, capsys):
    assert main(["--json", "--fallback", "none", "--max-new-tokens", "16", str(image_file)]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert "The draft stops mid-sentence" in alone["warnings"]  # 16 tokens: the one-step draft is cut short
    assert main(["--json", "--max-new-tokens", "16", str(image_file)]) == 0  # no --fallback: teacher, then AR
    out = json.loads(capsys.readouterr().out)
    assert out["replaced"][0]["sampler"] == "echo" and out["replaced"][0]["report"] == alone["report"]
    assert out["sampler"] in ("teacher", "ar") and out["model"] == f"embedded:{out['sampler']}"
    assert [r["sampler"] for r in out["replaced"]] == ["echo", "teacher"][: len(out["replaced"])]
    # a sampler named by the user, or a checkpoint given by path, is drafted as asked
    assert main(["--json", "--sampler", "teacher", "--max-new-tokens", "16", str(image_file)]) == 0
    assert json.loads(capsys.readouterr().out)["replaced"] == []


@pytest.fixture(scope="module")
def normalized_model_dir(model_dir, tmp_path_factory):
    """The tiny checkpoint, declared in its config as trained on normalized reports (``echo.report_style``)."""
    out = tmp_path_factory.mktemp("normalized") / "tiny"
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["echo"]["report_style"] = "normalized"
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("sampler", ["ar", "teacher", "echo", "vanilla"])
def test_every_draft_is_checked_and_never_repaired(model_dir, sampler):
    """The tiny random model writes garble: the draft keeps the decoded text exactly and says what is wrong."""
    drafter = Drafter(str(model_dir))
    draft = drafter.draft([synthetic_cxr(2)], sampler=sampler, config=SamplerConfig(max_new_tokens=24),
                          warnings=["view 1: an input warning"])
    assert draft.report == draft.result.text  # nothing appended, cut or re-formatted
    expected = check_report(draft.result.text, normalized=False).warnings
    assert expected, f"a random tiny model wrote a well-formed report: {draft.report!r}"
    assert draft.warnings == ["view 1: an input warning", *expected]
    assert not any(w.startswith("No statement about") for w in draft.warnings)  # raw-style model


def test_a_normalized_model_is_also_asked_for_every_region(normalized_model_dir, capsys, image_file):
    assert main(["--model", str(normalized_model_dir), "--json", "--max-new-tokens", "24", str(image_file)]) == 0
    out = json.loads(capsys.readouterr().out)
    region_warnings = [w for w in out["warnings"] if w.startswith("No statement about")]
    assert region_warnings, out["warnings"]
    assert out["warnings"] == check_report(out["report"], normalized=True).warnings


def test_quantize_int8_drafts_with_int8_weights(model_dir, image_file, capsys):
    from echo_model.device import quantization_of

    assert main(["--model", str(model_dir), "--json", "--quantize", "int8", "--device", "cpu",
                 "--max-new-tokens", "8", str(image_file)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["settings"]["quantize"] == "int8" and out["tokens"] > 0
    drafter = Drafter(str(model_dir), device="cpu", quantize="int8", warm_up=False)
    assert quantization_of(drafter.checkpoint("echo").model.model) == "int8-dynamic"
    assert quantization_of(Drafter(str(model_dir), device="cpu", warm_up=False).checkpoint("echo").model.model) == "none"


def test_quantize_int8_is_refused_quoting_a_failed_gate(model_dir, image_file, capsys, monkeypatch):
    from echo_model import device

    failed = device.Int8Gate(studies=300, data="synthetic studies", identical_share={"echo": 0.5, "ar": 0.9},
                             rouge_l_delta={"echo": -0.04, "ar": 0.0}, rouge_l_low={"echo": -0.06, "ar": -0.002})
    monkeypatch.setattr(device, "INT8_GATE", failed)
    assert main(["--model", str(model_dir), "--quantize", "int8", str(image_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("echo-report: error:") and "quality gate failed" in err
    assert "-0.0600" in err and "identical 50.0 %" in err and "300 synthetic studies" in err
    with pytest.raises(ValueError, match="quantize must be one of"):
        Drafter(str(model_dir), quantize="int4")
