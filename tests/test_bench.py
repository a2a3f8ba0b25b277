"""The speed benchmark: report contents, counting consistency, the cost-model fit and cap, settings checks.

Timings are never asserted (they depend on the machine and its load); only behaviour is.
"""

from __future__ import annotations

import copy
import itertools
import json
import time

import numpy as np
import pytest
import torch

from echo_eval.bench import (
    ArmSettings,
    BenchConfig,
    CostModel,
    CostPoint,
    CostProbe,
    check_uniform_settings,
    fit_cost_model,
    format_report,
    forward_cache_growth,
    forward_schedule,
    plot_report,
    predicted_seconds,
    quantization_of,
    quantize_checkpoint,
    run_benchmark,
    schedule_query_lengths,
    speedup_cap,
)
from echo_eval.bench_cli import build_parser, config_from_args, main
from echo_model.imaging.synthetic import phantom_cxr

MAX_NEW = 20  # with the tiny b=8 prompt: a partial first block, full blocks, and a partial last block
# One thread: the tiny model gains nothing from two, and a single thread stays steady when the CPU is shared.
TINY_CONFIG = BenchConfig(batches=(1, 2), runs=2, warmup=0, max_new_tokens=MAX_NEW, query_lengths=(1, 4, 16),
                          probe_repeats=2, threads=1)


@pytest.fixture(scope="module")
def images():
    return [phantom_cxr((112, 128), seed=i) for i in range(2)]


@pytest.fixture(scope="module")
def report(checkpoint_b8, images):
    arms = {a: checkpoint_b8 for a in TINY_CONFIG.arms}
    return run_benchmark(TINY_CONFIG, images=images, checkpoints=arms)


@pytest.fixture(scope="module")
def data(report):
    return report.to_json()


def test_forward_timer_counts_only_the_models_forwards_and_leaves_no_hooks(checkpoint_b8, report):
    from echo_eval.bench.measure import ForwardTimer

    hf = checkpoint_b8.model.model
    assert not hf._forward_hooks and not hf._forward_pre_hooks  # the benchmark removed its hooks
    layer = torch.nn.Linear(4, 4)
    with ForwardTimer([layer, layer]) as timer:  # one module given twice is timed once per call
        layer(torch.zeros(1, 4))
        time.sleep(0.02)  # outside any forward: not counted
        layer(torch.zeros(1, 4))
    assert 0 < timer.seconds < 0.02
    assert not layer._forward_hooks and not layer._forward_pre_hooks


@pytest.mark.parametrize("arm", ["echo", "ar", "teacher"])
def test_replay_makes_the_runs_forwards_again_at_the_same_shapes(checkpoint_b8, images, arm, monkeypatch):
    """replay_forwards gives each recorded forward the run's query length and the cache length it read (the
    fused forward keeps one block, a read-only one none, AR every token), images on the prefill only."""
    from echo_eval.bench.measure import ForwardTimer, encode_studies, replay_forwards
    from echo_model.sampling import SamplerConfig, build_sampler

    model, processor = checkpoint_b8.model, checkpoint_b8.processor
    sampler = build_sampler(arm, model, processor, SamplerConfig(max_new_tokens=MAX_NEW, fixed_length=True))
    prompt = encode_studies(processor, images, 1)
    with ForwardTimer([model.model], record=True) as timer:
        result = sampler.generate(prompt)[0]
        calls = timer.take_calls()
    assert not timer.calls and len(calls) == result.model_calls
    run = [(c.kwargs["input_ids"].shape[1], c.cache_length, c.kwargs.get("pixel_values") is not None) for c in calls]
    assert run[0][1:] == (0, True) and not any(images for _, _, images in run[1:])
    seen = []
    forward = model.model.forward

    def spy(**kwargs):
        seen.append((kwargs["input_ids"].shape[1], kwargs["cache"].get_seq_length(),
                     kwargs.get("pixel_values") is not None))
        return forward(**kwargs)

    monkeypatch.setattr(model.model, "forward", spy)
    assert replay_forwards(calls) > 0
    assert seen == run
    if arm == "echo":  # one prefill, a read-only first block, then fused [previous | current] forwards
        b = model.block_length
        assert [q for q, _, _ in run[2:]] == [2 * b] * (len(run) - 2)
        assert [c for _, c, _ in run[2:]] == [run[1][1] + b * k for k in range(len(run) - 2)]


def test_json_has_required_keys_and_serialises(data):
    for key in ("speedup_ar_over_echo", "speedup_teacher_over_echo", "device", "threads", "dtype", "cost_model",
                "quantization", "measured_over_cap", "decode_speedup_ar_over_echo", "results", "speedups"):
        assert key in data, key
    assert set(data["arms"]) == {"ar", "teacher", "vanilla", "echo"}
    for entry in data["arms"].values():
        for key in ("median_seconds", "tokens_per_forward", "tokens_per_second", "forward_passes", "model_calls",
                    "median_first_block_seconds", "tokens", "seconds_iqr", "tokens_per_second_min_max",
                    "threads", "dtype", "quantization"):
            assert key in entry, key
    for key in ("a", "c", "cap_b8", "cap_b16", "points"):
        assert key in data["cost_model"], key
    assert set(data["cost_models"]) == {"1", "2"}
    assert data["threads"] == 1 and data["dtype"] == "float32"
    assert data["quantization"] == "none"
    assert isinstance(data["speedup_ar_over_echo"], float) and data["speedup_ar_over_echo"] > 0
    json.loads(json.dumps(data))  # plain JSON types only
    # every (mode, batch, arm) cell is present, each with the requested number of timed runs
    cells = {(r["mode"], r["batch"], r["arm"]) for r in data["results"]}
    assert len(cells) == 2 * 2 * 4 and all(r["runs"] == TINY_CONFIG.runs for r in data["results"])


def test_tokens_per_forward_matches_counts(data, checkpoint_b8):
    b = checkpoint_b8.model.block_length
    for r in data["results"]:
        # per report, then averaged over the batch: equal to the ratio of the means only when the batch's
        # reports cost alike (always at batch 1)
        rel = 1e-3 if r["batch"] == 1 else 0.05
        assert r["tokens_per_forward"] == pytest.approx(r["committed_tokens"] / r["forward_passes"], rel=rel)
        assert r["model_calls"] >= r["forward_passes"]
        if r["arm"] == "ar":
            assert r["tokens_per_forward"] == 1.0 and r["forward_passes"] == r["tokens"]
        if r["arm"] in ("echo", "vanilla"):
            blocks = r["block_tokens"]
            assert r["forward_passes"] == len(blocks)  # one forward per block
            assert len(blocks) >= 3 and all(n == b for n in blocks[1:])  # full blocks: b tokens per forward
            assert r["model_calls"] == r["forward_passes"] + 1  # + the prefill
        if r["arm"] == "teacher":
            assert r["tokens_per_forward"] <= b


def test_fixed_length_gives_the_same_tokens_to_every_arm(data):
    fixed = [r for r in data["results"] if r["mode"] == "fixed"]
    assert fixed and {r["tokens"] for r in fixed} == {MAX_NEW}


def test_arms_recorded_identical_settings(report):
    settings: dict[str, list[ArmSettings]] = {}
    for c in report.cells:
        settings.setdefault(c.arm, []).extend(c.settings)
    cells = len(TINY_CONFIG.modes) * len(TINY_CONFIG.batches)
    assert all(len(v) == TINY_CONFIG.runs * cells for v in settings.values())  # one record per timed run
    assert check_uniform_settings(settings) == report.settings


def test_report_prints_and_plots(data, tmp_path):
    text = format_report(data)
    assert "cap_b8" in text and "echo" in text and "fixed length, batch 2" in text
    out = tmp_path / "speed.png"
    plot_report(data, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ cost model
def test_fit_recovers_a_and_c_from_noisy_synthetic_timings():
    a, c = 4.0e-3, 2.5e-4
    T = np.array([1, 2, 4, 8, 16, 32, 64] * 5, dtype=float)
    rng = np.random.default_rng(0)
    t = a + c * T + rng.normal(0, 2e-5, size=T.shape)
    fit = fit_cost_model(T, t)
    assert fit.a == pytest.approx(a, rel=0.02)
    assert fit.c == pytest.approx(c, rel=0.02)
    assert fit.r2 > 0.99
    exact = fit_cost_model([1, 2, 4], [a + c, a + 2 * c, a + 4 * c])
    assert exact.a == pytest.approx(a) and exact.c == pytest.approx(c)


@pytest.mark.parametrize("T,t", [([1, 1, 1], [1.0, 1.1, 0.9]), ([1, 2], [0.1, -0.2]), ([1, 2], [0.1]),
                                 ([1, 2], [0.1, float("nan")])])
def test_fit_rejects_bad_input(T, t):
    with pytest.raises(ValueError):
        fit_cost_model(T, t)


def test_cap_formula():
    assert speedup_cap(1.0, 0.0, 8) == pytest.approx(8.0)  # width is free: the full b
    assert speedup_cap(0.0, 1.0, 8) == pytest.approx(0.5)  # pure FLOPs: 1 token per forward vs 2b per b
    assert speedup_cap(2.0, 0.5, 8) == pytest.approx(8 * 2.5 / (2.0 + 16 * 0.5))
    model = CostModel(a=3e-3, c=1e-4)
    assert model.cap(16) == pytest.approx(16 * (3e-3 + 1e-4) / (3e-3 + 32 * 1e-4))
    assert model.cap(8) < 8 and model.cap(16) > model.cap(8)
    with pytest.raises(ValueError, match="block_length"):
        speedup_cap(1.0, 0.1, 0)
    with pytest.raises(ValueError, match="non-positive"):
        speedup_cap(-1.0, 0.01, 8)


def test_predicted_seconds_counts_the_forwards_each_sampler_makes():
    cm = CostModel(a=1.0, c=0.1)
    assert predicted_seconds("ar", model_calls=10, forward_passes=10, block_length=4, cost=cm,
                             prefill_seconds=5.0) == pytest.approx(5.0 + 9 * 1.1)
    assert predicted_seconds("echo", model_calls=4, forward_passes=3, block_length=4, cost=cm,
                             prefill_seconds=5.0) == pytest.approx(5.0 + 1.4 + 2 * 1.8)
    with pytest.raises(ValueError, match="bogus"):
        predicted_seconds("bogus", model_calls=1, forward_passes=1, block_length=4, cost=cm, prefill_seconds=0)


def _probe(medians: dict[int, float], prefill: float = 0.5) -> CostProbe:
    points = [CostPoint(T, m, m, m) for T, m in medians.items()]
    fit = fit_cost_model(list(medians), list(medians.values()))
    return CostProbe(batch=1, cache_length=40, points=points, prefill_seconds=prefill, model=fit)


def test_predictions_use_the_medians_at_each_forwards_query_length():
    # t(1) far below the line through the other points: the fit would overstate AR's forwards
    probe = _probe({1: 0.010, 4: 0.030, 8: 0.032, 16: 0.040})
    assert forward_schedule("ar", model_calls=10, forward_passes=10, block_length=4) == {1: 9}
    assert forward_schedule("echo", model_calls=4, forward_passes=3, block_length=4) == {4: 1, 8: 2}
    assert forward_schedule("teacher", model_calls=7, forward_passes=4, block_length=4) == {4: 6}
    assert forward_schedule("echo", model_calls=2, forward_passes=1, block_length=8) == {8: 1}
    assert predicted_seconds("ar", model_calls=10, forward_passes=10, block_length=4, cost=probe,
                             prefill_seconds=0.5) == pytest.approx(0.5 + 9 * 0.010)
    assert predicted_seconds("echo", model_calls=4, forward_passes=3, block_length=4, cost=probe,
                             prefill_seconds=0.5) == pytest.approx(0.5 + 0.030 + 2 * 0.032)
    assert probe.model.seconds(1) > 0.010 + 1e-4  # the line does overstate t(1) here
    with pytest.raises(ValueError, match="T=16 was not probed"):  # b = 8: fused forwards of 16 queries
        predicted_seconds("echo", model_calls=4, forward_passes=3, block_length=8, cost=_probe({1: 0.01, 8: 0.02}),
                          prefill_seconds=0.0)
    assert schedule_query_lengths(("ar", "teacher", "echo"), 8) == (1, 8, 16)


def test_a_grown_probe_prices_each_forward_at_the_cache_it_reads():
    """Decoding forwards read a cache that grows with the report: the probe's two caches are interpolated."""
    at_prompt = [CostPoint(1, 0.010, 0.010, 0.010), CostPoint(8, 0.020, 0.020, 0.020), CostPoint(16, 0.030, 0.03, 0.03)]
    grown = [CostPoint(1, 0.011, 0.011, 0.011), CostPoint(8, 0.024, 0.024, 0.024), CostPoint(16, 0.038, 0.038, 0.038)]
    probe = CostProbe(batch=1, cache_length=100, points=at_prompt, prefill_seconds=0.5,
                      model=fit_cost_model([1, 8, 16], [0.01, 0.02, 0.03]), grown_cache_length=300,
                      grown_points=grown)
    assert probe.seconds(16) == pytest.approx(0.030)  # no growth given: the prompt's cache
    assert probe.seconds(16, 100) == pytest.approx(0.034)  # half way to the grown cache
    assert probe.seconds(16, 400) == pytest.approx(0.046)  # beyond it: extrapolated on the same line
    # 64 fixed tokens at b = 8: 1 first-block forward (cache of the prompt) + 8 fused ones reading 0 .. 7 blocks
    assert forward_cache_growth("echo", model_calls=10, forward_passes=9, block_length=8) == {8: 0.0, 16: 28.0}
    # AR: 64 forwards after the prefill, reading 0 .. 63 generated tokens
    assert forward_cache_growth("ar", model_calls=65, forward_passes=64, block_length=8) == {1: 31.5}
    # teacher: 3 blocks (2 cache writes + the last), forwards of block k read k blocks
    assert forward_cache_growth("teacher", model_calls=15, forward_passes=12, block_length=8) == {8: 8.0}
    echo = 0.5 + 0.020 + 8 * (0.030 + 0.008 * 28 / 200)
    assert predicted_seconds("echo", model_calls=10, forward_passes=9, block_length=8, cost=probe,
                             prefill_seconds=0.5) == pytest.approx(echo)
    assert predicted_seconds("echo", model_calls=10, forward_passes=9, block_length=8, cost=probe,
                             prefill_seconds=0.5, cache_growth=False) == pytest.approx(0.5 + 0.020 + 8 * 0.030)
    assert CostModel(a=1.0, c=0.1).seconds(8, 500) == pytest.approx(1.8)  # the fit does not model the cache


def test_report_predicts_each_arm_from_the_probe_medians(data, checkpoint_b8):
    b = checkpoint_b8.model.block_length
    for (mode, key), batch in itertools.product((("fixed", "predictions"), ("natural", "predictions_natural")),
                                                ("1", "2")):
        probe = data["cost_models"][batch]
        medians = {p["query_tokens"]: p["median"] for p in probe["points"]}
        assert {1, b, 2 * b} <= set(medians)  # the schedule's lengths are probed even when not asked for
        # one probe round after every timed round of this batch (fixed and natural), topped up to probe_repeats
        assert probe["rounds"] == max(TINY_CONFIG.runs * len(TINY_CONFIG.modes), TINY_CONFIG.probe_repeats)
        grown = {p["query_tokens"]: p["median"] for p in probe["grown"]["points"]}
        assert set(grown) == set(medians)  # every length again against the cache grown by max_new_tokens
        span = probe["grown"]["cache_length"] - probe["cache_length"]
        assert span == data["settings"]["max_new_tokens"]
        pred = data[key][batch]
        cells = {r["arm"]: r for r in data["results"] if r["mode"] == mode and r["batch"] == int(batch)}
        assert set(pred["arms"]) == set(cells)
        for arm, v in pred["arms"].items():
            at_prompt = probe["prefill_seconds"] + sum(n * medians[int(T)] for T, n in v["forwards"].items())
            expected = probe["prefill_seconds"] + sum(
                n * (medians[int(T)] + (grown[int(T)] - medians[int(T)]) * v["mean_cache_growth"].get(T, 0) / span)
                for T, n in v["forwards"].items())
            # the JSON keeps seconds to the microsecond and cache growth to 1/100 token: a millisecond-scale
            # prediction of the tiny model is compared within that rounding, not only relatively
            assert v["predicted_seconds"] == pytest.approx(expected, rel=1e-4, abs=2e-6)
            assert v["predicted_seconds_prompt_cache"] == pytest.approx(at_prompt, rel=1e-4, abs=1e-6)
            # the run's own split: seconds inside the model's forwards, the rest the sampler's
            assert v["forward_seconds_in_run"] == pytest.approx(cells[arm]["median_forward_seconds"], rel=1e-4)
            assert 0 < cells[arm]["median_forward_seconds"] < cells[arm]["median_wall_seconds"]
            assert 0 < v["outside_forward_share"] < 1
            assert v["measured_seconds"] == pytest.approx(cells[arm]["median_seconds"], rel=1e-4)
            assert v["overhead"] == pytest.approx(v["measured_seconds"] / v["predicted_seconds"] - 1, abs=1e-3)
            # each run's own forwards replayed right after it: the overhead is the median of the runs' ratios
            assert v["replayed_seconds"] == pytest.approx(cells[arm]["median_replayed_seconds"], rel=1e-4)
            assert v["replayed_seconds"] > 0
            assert cells[arm]["replayed_seconds_min_max"][0] > 0  # every run replayed, the deferred last one too
            assert v["overhead_replayed"] == pytest.approx(cells[arm]["median_over_replayed"] - 1, abs=1e-4)
        if mode == "natural":
            continue
        fixed = cells
        echo = pred["arms"]["echo"]["forwards"]
        assert echo[str(b)] == 1 and echo[str(2 * b)] == fixed["echo"]["forward_passes"] - 1
        assert pred["arms"]["ar"]["forwards"] == {"1": fixed["ar"]["tokens"] - 1}
        # fixed length: AR's forwards read 0 .. n-2 generated tokens, ECHO's fused ones 0 .. F-2 blocks
        assert pred["arms"]["ar"]["mean_cache_growth"] == {"1": pytest.approx((fixed["ar"]["tokens"] - 2) / 2)}
        assert pred["arms"]["echo"]["mean_cache_growth"] == {
            str(b): 0.0, str(2 * b): pytest.approx(b * (fixed["echo"]["forward_passes"] - 2) / 2)}
        ratio = (fixed["ar"]["median_seconds"] / pred["arms"]["ar"]["predicted_seconds"]) / (
            fixed["echo"]["median_seconds"] / pred["arms"]["echo"]["predicted_seconds"])
        # equal token counts in fixed mode: the ratio of rates is the ratio of seconds
        assert pred["measured_over_predicted_speedup"] == pytest.approx(ratio, rel=1e-2)
    assert data["overheads"] == {a: v["overhead"] for a, v in data["predictions"]["1"]["arms"].items()}
    head = data["predictions"]["1"]
    assert data["echo_measured_over_replayed"] == pytest.approx(1 + head["arms"]["echo"]["overhead_replayed"], abs=1e-4)
    assert head["measured_over_replayed_speedup"] == pytest.approx(
        (1 + head["arms"]["ar"]["overhead_replayed"]) / (1 + head["arms"]["echo"]["overhead_replayed"]), abs=1e-3)
    assert data["meets_target_replayed"] == (data["echo_measured_over_replayed"] <= 1.05
                                             and data["measured_over_replayed_speedup"] >= 0.95)
    assert data["predicted_speedup_ar_over_echo"] == data["predictions"]["1"]["predicted_speedup_ar_over_echo"]
    text = format_report(data)
    assert "overhead" in text and "reported, not targets" in text and "of predicted" in text
    assert "replayed back to back" in text and "against the runs' own forwards replayed" in text
    assert "natural length, batch 2:" in text


# ------------------------------------------------------------------------------------------ settings
def test_mismatched_threads_or_dtype_raise():
    base = ArmSettings(threads=2, dtype="float32", quantization="none", device="cpu")
    same = {"ar": base, "echo": base}
    assert check_uniform_settings(same) == base
    with pytest.raises(ValueError, match="threads"):
        check_uniform_settings({"ar": base, "echo": ArmSettings(1, "float32", "none", "cpu")})
    with pytest.raises(ValueError, match="dtype"):
        check_uniform_settings({"ar": base, "echo": ArmSettings(2, "bfloat16", "none", "cpu")})
    with pytest.raises(ValueError, match="threads"):  # a change during one arm's runs is caught too
        check_uniform_settings({"ar": [base, ArmSettings(1, "float32", "none", "cpu")]})


def test_run_benchmark_refuses_arms_with_different_dtype(checkpoint_b8, images):
    other = copy.deepcopy(checkpoint_b8)
    other.model.model.to(torch.float64)
    arms = {"ar": checkpoint_b8, "teacher": checkpoint_b8, "vanilla": checkpoint_b8, "echo": other}
    with pytest.raises(ValueError, match="dtype"):
        run_benchmark(TINY_CONFIG, images=images, checkpoints=arms)


def test_int8_quantisation_applies_to_every_arm_alike(checkpoint_b8, images):
    ck = copy.deepcopy(checkpoint_b8)
    assert quantization_of(ck.model.model) == "none"
    cfg = BenchConfig(arms=("ar", "echo"), batches=(1,), runs=1, warmup=0, max_new_tokens=8, modes=("fixed",),
                      query_lengths=(1, 2), probe_repeats=1, quantize="int8", threads=1)
    data = run_benchmark(cfg, images=images[:1], checkpoints={"ar": ck, "echo": ck}).to_json()
    assert quantization_of(ck.model.model) == "int8-dynamic"
    assert data["quantization"] == "int8-dynamic"
    assert {e["quantization"] for e in data["arms"].values()} == {"int8-dynamic"}
    # one quantised arm next to an fp32 one is refused
    with pytest.raises(ValueError, match="quantization"):
        run_benchmark(BenchConfig(arms=("ar", "echo"), batches=(1,), runs=1, modes=("fixed",)),
                      images=images[:1], checkpoints={"ar": ck, "echo": checkpoint_b8})
    with pytest.raises(ValueError, match="'int4'"):
        quantize_checkpoint(ck, "int4")


@pytest.mark.parametrize("kwargs", [{"arms": ("ar", "gpt")}, {"runs": 0}, {"batches": (0,)}, {"modes": ("fast",)},
                                    {"query_lengths": (4, 4)}, {"quantize": "int4"}, {"threads": 0}])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        BenchConfig(**kwargs)


# ------------------------------------------------------------------------------------------ images, CLI
def test_cli_full_and_explicit_flags():
    cfg = config_from_args(build_parser().parse_args(["--full"]))
    assert (cfg.max_new_tokens, cfg.runs, cfg.batches) == (256, 10, (1, 4))
    cfg = config_from_args(build_parser().parse_args(["--full", "--runs", "6", "--batch", "8", "--arms", "echo", "ar"]))
    assert (cfg.runs, cfg.batches, cfg.arms) == (6, (1, 8), ("ar", "echo"))
    default = config_from_args(build_parser().parse_args(["--device", "cpu"]))
    assert (default.max_new_tokens, default.runs, default.batches, default.modes) == (64, 5, (1, 4), ("fixed", "natural"))
    assert 1 <= default.threads <= torch.get_num_threads()  # auto: the free cores, at least one
    assert config_from_args(build_parser().parse_args(["--threads", "torch"])).threads is None
    assert config_from_args(build_parser().parse_args(["--threads", "3"])).threads == 3
    with pytest.raises(ValueError, match="'many'"):
        config_from_args(build_parser().parse_args(["--threads", "many"]))


def test_cli_end_to_end_on_the_embedded_checkpoints(tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc = main(["--arms", "ar", "echo", "--batch", "1", "--runs", "1", "--warmup", "0", "--max-new-tokens", "8",
               "--modes", "fixed", "--query-lengths", "1", "16", "--probe-repeats", "1", "--json", str(out),
               "--no-progress", "--device", "cpu", "--threads", "1"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data["arms"]) == {"ar", "echo"} and data["block_length"] == 8
    assert "cap_b8" in capsys.readouterr().out
    assert main(["--batch", "0"]) == 2


def test_cycle_images_drafts_every_study_once_per_pass(checkpoint_b8, monkeypatch):
    """``cycle_images``: round r drafts images r*B .. r*B+B-1 (mod n), the same ones for every arm; without it
    every round drafts the first B."""
    import echo_eval.bench.measure as measure

    seen: dict[str, list[list[int]]] = {}
    real = measure.build_sampler

    def recording(name, model, processor, config):
        sampler = real(name, model, processor, config)
        generate = sampler.generate

        def record(prompts):
            # a study's identity: the sum of its pixel values (each phantom differs)
            seen.setdefault(name, []).append([round(float(p.pixel_values.sum()), 1) for p in prompts])
            return generate(prompts)

        sampler.generate = record
        return sampler

    monkeypatch.setattr(measure, "build_sampler", recording)
    images = [phantom_cxr((112, 128), seed=i) for i in range(3)]
    ids = [round(float(checkpoint_b8.processor.encode([im]).pixel_values.sum()), 1) for im in images]
    assert len(set(ids)) == 3
    arms = {"ar": measure.Arm("ar", checkpoint_b8), "echo": measure.Arm("echo", checkpoint_b8)}
    measure.measure_cell(arms, images, mode="natural", batch=2, runs=3, warmup=0, max_new_tokens=4, cycle=True)
    assert seen["ar"] == seen["echo"] == [[ids[0], ids[1]], [ids[2], ids[0]], [ids[1], ids[2]]]
    seen.clear()
    measure.measure_cell(arms, images, mode="natural", batch=2, runs=2, warmup=0, max_new_tokens=4)
    assert seen["echo"] == [[ids[0], ids[1]]] * 2
    assert config_from_args(build_parser().parse_args(["--cycle-images"])).cycle_images
