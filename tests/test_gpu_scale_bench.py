"""scripts/gpu_scale_bench.py on the CPU with its scaled-down configuration: the table's structure, the token
counts of both arms, the budget, the version check and the official configuration's size. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENS, TEACHER_TOKENS = 12, 8


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_scale_bench", ROOT / "scripts" / "gpu_scale_bench.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _args(out: Path, budget: float) -> list[str]:
    return ["--scale", "tiny", "--device", "cpu", "--dtype", "float32", "--max-new-tokens", str(TOKENS),
            "--teacher-tokens", str(TEACHER_TOKENS), "--batch", "2", "--runs", "1", "--image-size", "56",
            "--budget-s", str(budget), "--json", str(out)]


@pytest.fixture(scope="module")
def data(bench, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("gpu_scale") / "scale.json"
    assert bench.main(_args(out, 600)) == 0
    return json.loads(out.read_text())


def test_table_puts_the_papers_rows_beside_ours(data, bench):
    rows = {r["row"]: r for r in data["table1"]}
    assert [r["row"] for r in data["table1"]] == [row[0] for row in bench.PAPER_TABLE1]
    for label, arm, b, paper in bench.PAPER_TABLE1:
        assert rows[label]["paper_tps"] == paper and rows[label]["arm"] == arm and rows[label]["block_length"] == b
        assert rows[label]["status"] == "ran" and rows[label]["ours_tps"] > 0
    assert rows["Lingshu-7B (AR)"]["ours_over_ar"] == 1.0
    assert rows["ECHO_blk8"]["ours_over_ar"] == pytest.approx(data["headline"]["echo_over_ar"], abs=0.01)
    assert data["headline"]["meets_paper_ratio"] == (data["headline"]["echo_over_ar"] >= 5.1)
    assert data["attention"] == "sdpa" and data["cache"] == "DynamicCache" and data["compile"] is False
    assert data["dtype"] == "float32" and data["device"] and data["memory_peak"]["gib"] > 0


def test_every_cell_produced_the_requested_tokens(data):
    cells = {c["name"]: c for c in data["cells"]}
    assert set(cells) == {"headline", "ECHO_blk4", "teacher", "batch 2"}
    assert set(cells["headline"]["results"]) == {"ar", "echo"}
    for name, cell in cells.items():
        assert cell["status"] == "ran", name
        want = TEACHER_TOKENS if name == "teacher" else TOKENS
        for arm, r in cell["results"].items():
            assert r["tokens"] == want, (name, arm)
    # the fused sampler makes one forward per block, AR one per token
    b8, b4 = cells["headline"]["results"]["echo"], cells["ECHO_blk4"]["results"]["echo"]
    assert b4["forward_passes"] > b8["forward_passes"]
    assert cells["headline"]["results"]["ar"]["forward_passes"] == TOKENS


def test_cells_over_the_budget_are_skipped_and_said_so(bench, tmp_path, capsys):
    out = tmp_path / "scale.json"
    assert bench.main(_args(out, 0)) == 0
    data = json.loads(out.read_text())
    cells = {c["name"]: c for c in data["cells"]}
    assert cells["headline"]["status"] == "ran"
    for name in ("ECHO_blk4", "teacher", "batch 2"):
        assert cells[name]["status"] == "skipped" and "--budget-s" in cells[name]["reason"]
    blk4 = next(r for r in data["table1"] if r["row"] == "ECHO_blk4")
    assert blk4["ours_tps"] is None and blk4["status"] == "skipped"
    assert "skipped" in capsys.readouterr().out


def test_version_check_names_what_is_missing(bench):
    assert bench.version_problems({"torch": "2.13.0+cu128", "transformers": "5.25.0"}) == []
    old = bench.version_problems({"torch": "2.13.0", "transformers": "4.55.4"})
    assert len(old) == 1 and "transformers 4.55.4" in old[0] and ">= 5.24" in old[0]
    assert "torch is not installed" in bench.version_problems({"torch": None, "transformers": "5.25"})[0]


def test_bad_arguments_exit_2(bench, capsys):
    assert bench.main(["--image-size", "100"]) == 2
    assert "multiple of 28" in capsys.readouterr().err
    assert bench.main(["--runs", "0"]) == 2


def test_official_scale_has_the_7b_size(bench):
    """Built on the meta device (no memory): Qwen2.5-VL-7B has 8.29 B parameters with its untied lm head."""
    ck = bench.build_random_checkpoint(bench.scale_config("official"), device="meta", dtype=torch.bfloat16, block_length=8,
                                       image_size=448)
    model = ck.model.model
    n = sum(p.numel() for p in model.parameters())
    assert 8.2e9 < n < 8.4e9
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "sdpa"
    assert ck.processor.mask_token_id < model.config.text_config.vocab_size == 152064
    from echo_model.imaging.synthetic import phantom_cxr

    prompt = ck.processor.encode([phantom_cxr((448, 448))])
    assert prompt.image_grid_thw.tolist() == [[1, 32, 32]]  # 448 / 14 = 32 patches a side: 256 merged tokens
