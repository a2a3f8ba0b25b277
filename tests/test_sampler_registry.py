"""The sampler registry: one table that names, configures and describes every sampler."""

from __future__ import annotations

import subprocess
import sys

import pytest

from echo_model.sampling import (
    SAMPLER_ROLES,
    SAMPLER_SPECS,
    SAMPLERS,
    ARSampler,
    BlockDiffusionSampler,
    SamplerConfig,
    build_sampler,
    sampler_spec,
)


def test_every_name_builds_the_sampler_its_spec_describes(checkpoint_b8):
    ck = checkpoint_b8
    b = ck.model.block_length
    for name in SAMPLERS:
        spec = sampler_spec(name)
        sampler = build_sampler(name, ck.model, ck.processor, SamplerConfig(steps=3, fused=False))
        assert sampler.name == name
        if spec.kind == "ar":
            assert isinstance(sampler, ARSampler)
            continue
        assert isinstance(sampler, BlockDiffusionSampler)
        assert sampler.config.fused == spec.fused
        # one-step samplers always run one step; the teacher keeps a caller's step count, else b
        assert sampler.config.steps == (1 if spec.one_step else 3)
        assert build_sampler(name, ck.model, ck.processor).config.steps == (1 if spec.one_step else b)


def test_the_table_matches_the_paper():
    assert set(SAMPLERS) == {"ar", "teacher", "echo", "vanilla"}
    assert SAMPLER_ROLES == {"ar": "ar", "teacher": "teacher", "vanilla": "teacher", "echo": "student"}
    assert [n for n in SAMPLERS if sampler_spec(n).one_step] == ["echo", "vanilla"]
    assert [n for n in SAMPLERS if sampler_spec(n).multi_step] == ["teacher"]
    assert sampler_spec("ar").scoring == "causal" and sampler_spec("echo").scoring == "masked-diffusion"
    # query tokens of the first and later denoising forwards (the cost model's inputs), b = 8
    assert sampler_spec("ar").query_tokens(8) == (1, 1)
    assert sampler_spec("teacher").query_tokens(8) == (8, 8)
    assert sampler_spec("echo").query_tokens(8) == (8, 16)
    assert all(spec.label and spec.schedule for spec in SAMPLER_SPECS.values())


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown sampler 'fast'.*'echo'"):
        sampler_spec("fast")
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_spec(None)  # type: ignore[arg-type]


def test_command_lines_offer_exactly_the_registered_samplers():
    from echo_eval.bench_cli import build_parser as bench_parser
    from echo_eval.eval_cli import build_parser as eval_parser
    from echo_model.cli import build_parser as report_parser

    def choices(parser, dest):
        return next(a.choices for a in parser._actions if a.dest == dest)

    assert list(choices(report_parser(), "sampler")) == list(SAMPLERS)
    assert list(choices(eval_parser(), "sampler")) == list(SAMPLERS)
    assert list(choices(bench_parser(), "arms")) == list(SAMPLERS)


def test_listing_the_samplers_imports_no_torch():
    code = "import sys; from echo_model.sampling import SAMPLERS, sampler_spec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
