"""One record of what a run cost (RunFigures), written alike by every serialiser."""

from __future__ import annotations

import pytest
from conftest import synthetic_cxr

from echo_eval.bench import RunSample
from echo_eval.evaluation import StudyPrediction
from echo_model.drafting import Draft
from echo_model.sampling import GenerationResult, SamplerConfig, build_sampler


@pytest.fixture(scope="module")
def results(checkpoint_b8):
    ck = checkpoint_b8
    prompts = [ck.processor.encode([synthetic_cxr(s)]) for s in range(2)]
    return build_sampler("echo", ck.model, ck.processor, SamplerConfig(max_new_tokens=20)).generate(prompts)


def test_figures_are_the_result_counts(results):
    for r in results:
        f = r.figures
        assert (f.tokens, f.forward_passes, f.model_calls, list(f.block_tokens)) == (
            r.tokens, r.forward_passes, r.model_calls, r.block_tokens)
        assert f.tokens_per_forward == r.tokens_per_forward and f.seconds == r.seconds
        exact = f.to_json(rounded=False)
        assert exact["seconds"] == r.seconds and exact["tokens_per_second"] == r.tokens_per_second
        assert f.to_json()["seconds"] == round(r.seconds, 4)
        assert r.stats() == {"sampler": "echo", **f.to_json()}


def test_every_serialiser_writes_the_same_figures(results):
    r = results[0]
    figures = r.figures.to_json()
    draft = Draft(report=r.text, sampler="echo", model="m", model_revision="v", result=r).to_json()
    assert {k: draft[k] for k in figures} == figures
    pred = StudyPrediction(id="s", prediction=r.text, reference="x", sampler="echo", model="m",
                           **StudyPrediction.cost_of(r.figures)).to_json()
    assert {k: pred[k] for k in ("tokens", "forward_passes", "tokens_per_forward", "seconds")} == {
        k: figures[k] for k in ("tokens", "forward_passes", "tokens_per_forward", "seconds")}
    sample = RunSample.from_results(results, wall_seconds=1.0)
    assert sample.tokens == sum(x.tokens for x in results) / 2
    assert sample.block_tokens == list(r.block_tokens)


def test_a_result_without_blocks_has_zero_rates():
    empty = GenerationResult(sampler="ar", token_ids=[], text="")
    f = empty.figures
    assert f.tokens == 0 and f.tokens_per_forward == 0.0 and f.tokens_per_second == 0.0
