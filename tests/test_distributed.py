"""Two-process ``accelerate launch`` on CPU (gloo): disjoint shards, and one 2-process step == one 1-process
step on the concatenated batch.

``--multi_gpu`` selects accelerate's torchrun launcher; on a machine without GPUs the processes join a gloo
process group on the CPU (``--cpu`` alone would start a single process, or need MPI for more).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROBE = Path(__file__).parent / "accelerate_probe.py"


@pytest.mark.slow
def test_two_process_step_equals_one_process_step(tmp_path, tokenizer):
    from conftest import accelerate_launch, make_checkpoint

    model_dir = tmp_path / "model"
    make_checkpoint(tokenizer, block_length=4, std=0.02, sharpen=1.0).save_pretrained(model_dir)
    launcher = shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate launcher is not on PATH")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(PROBE.parent.parent))
    two, one = tmp_path / "two", tmp_path / "one"
    accelerate_launch(launcher, [str(PROBE), str(two), "--model", str(model_dir)], env=env)
    subprocess.run([sys.executable, str(PROBE), str(one), "--batch", "4", "--model", str(model_dir)], check=True, env=env, timeout=600,
                   capture_output=True)
    seen0 = json.loads((two / "seen0.json").read_text())
    seen1 = json.loads((two / "seen1.json").read_text())
    assert seen0 and seen1 and not set(seen0) & set(seen1)
    assert sorted(seen0 + seen1) == sorted(json.loads((one / "seen0.json").read_text()))
    w2, w1, w0 = torch.load(two / "weights.pt"), torch.load(one / "weights.pt"), torch.load(one / "initial.pt")
    assert torch.equal(torch.load(two / "initial.pt")["lm_head.weight"], w0["lm_head.weight"])  # same start
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-5, rtol=1e-4)
    changed = [k for k in w1 if not torch.equal(w1[k], w0[k])]
    assert len(changed) > 10  # the step really moved the weights
