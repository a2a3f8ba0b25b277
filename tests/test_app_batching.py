"""Shared batches in the app: concurrent drafts decode together, each exactly as alone, with fewer model calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import synthetic_cxr

from app.admission import DraftingBusyError, GenerationGate
from app.batching import BatchKey, BatchRow, DraftBatcher
from app.service import BlockStep, DraftingService, Services
from app.settings import AppSettings
from app.store import Store
from echo_model.device import quantization_of
from echo_model.sampling import SamplerConfig

INDICATIONS = ("cough", None, "fever and chest pain for three days")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, checkpoint) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    checkpoint.save_pretrained(path)
    return path


def _service(model_dir: Path, tmp_path: Path, *, max_batch: int = 3, window_ms: int = 10_000,
             quantize: str = "none") -> Services:
    """Services whose batcher waits (long) until ``max_batch`` drafts are there, so a test's threads always meet."""
    settings = AppSettings(models=(str(model_dir),), data_dir=tmp_path / "data", upload_cache_dir=tmp_path / "c",
                           max_batch=max_batch, batch_window_ms=window_ms, quantize=quantize)
    return Services(settings=settings, drafting=DraftingService(settings), store=Store(settings.data_dir))


class CallCounter:
    """Counts calls of the stock model's ``forward`` and the rows each call decoded."""

    def __init__(self, module: torch.nn.Module):
        self.rows: list[int] = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        self.rows.append(int(kwargs["input_ids"].shape[0]))

    def take(self) -> list[int]:
        rows, self.rows = self.rows, []
        return rows

    def close(self) -> None:
        self.handle.remove()


def _stream(services: Services, i: int, config: SamplerConfig) -> Iterator[BlockStep]:
    """What the Generate handler does on the device: a shared admission, then the service's stream."""
    with services.gate.admitted(shared=True):
        yield from services.drafting.stream([synthetic_cxr(i)], model=None, sampler="echo", language="en",
                                            config=config, indication=INDICATIONS[i % 3])


def _concurrently(services: Services, config: SamplerConfig, n: int,
                  *, stop_after: dict[int, int] | None = None) -> list[list[BlockStep]]:
    """Draft studies 0..n-1 on n threads at once; thread i stops after ``stop_after[i]`` steps (as *Stop* does)."""
    steps: list[list[BlockStep]] = [[] for _ in range(n)]
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait()
            stream = _stream(services, i, config)
            for step in stream:
                steps[i].append(step)
                if stop_after and len(steps[i]) == stop_after.get(i):
                    stream.close()  # what Gradio does when the client stops or disconnects
                    return
        except BaseException as err:  # noqa: BLE001  (re-raised in the test thread below)
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if errors:
        raise errors[0]
    return steps


def _singles(services: Services, config: SamplerConfig, n: int, counter: CallCounter) -> list[tuple[list[BlockStep], int]]:
    runs = []
    for i in range(n):
        steps = list(_stream(services, i, config))
        runs.append((steps, len(counter.take())))
    return runs


def _model(services: Services) -> torch.nn.Module:
    return services.drafting.drafter(None).checkpoint("echo").model.model


def test_three_concurrent_drafts_equal_their_single_runs_in_one_batchs_model_calls(model_dir, tmp_path) -> None:
    services = _service(model_dir, tmp_path, max_batch=1)  # one per batch: the single runs
    config = SamplerConfig(max_new_tokens=24)
    counter = CallCounter(_model(services))
    try:
        singles = _singles(services, config, 3, counter)
        shared = _service(model_dir, tmp_path / "shared")
        counter.close()
        counter = CallCounter(_model(shared))
        together = _concurrently(shared, config, 3)
        calls = counter.take()
    finally:
        counter.close()
    assert len({s[0][-1].draft.report for s in singles}) > 1  # different studies: a vacuous match is excluded
    for (alone, _), steps in zip(singles, together):
        assert steps[-1].draft is not None and steps[-1].draft.report == alone[-1].draft.report
        assert [s.token_ids for s in steps] == [s.token_ids for s in alone]  # its own blocks, as alone
        assert [s.report for s in steps] == [s.report for s in alone]
        assert steps[-1].draft.result.forward_passes == alone[-1].draft.result.forward_passes
        assert {s.batch["batch_rows"] for s in steps} == {3} and alone[-1].batch["batch_rows"] == 1
    assert shared.drafting.batcher.batches == [3]
    assert set(calls) == {3}  # every model call decoded the three rows together
    assert len(calls) == max(n for _, n in singles) < sum(n for _, n in singles)


def test_a_stopped_draft_leaves_the_others_exactly_as_alone(model_dir, tmp_path) -> None:
    config = SamplerConfig(max_new_tokens=24, fixed_length=True)  # six blocks each: the stop lands mid-batch
    alone = [list(_stream(_service(model_dir, tmp_path / "alone", max_batch=1), i, config)) for i in range(3)]
    shared = _service(model_dir, tmp_path / "shared")
    steps = _concurrently(shared, config, 3, stop_after={1: 2})
    assert len(steps[1]) == 2 and steps[1][-1].draft is None  # stopped after its second block, nothing finished
    for i in (0, 2):
        assert steps[i][-1].draft.report == alone[i][-1].draft.report
        assert [s.token_ids for s in steps[i]] == [s.token_ids for s in alone[i]]
    assert shared.drafting.batcher.batches == [3]
    assert shared.gate.running_rows == 0 and shared.drafting.batcher.waiting == 0


def test_sampled_drafts_are_not_shared_and_keep_their_seeded_text(model_dir, tmp_path) -> None:
    config = SamplerConfig(max_new_tokens=16, temperature=0.9, seed=7)
    alone = [list(_stream(_service(model_dir, tmp_path / "alone", max_batch=1), i, config)) for i in range(2)]
    shared = _service(model_dir, tmp_path / "shared", max_batch=2)
    steps = _concurrently(shared, config, 2)
    assert sorted(shared.drafting.batcher.batches) == [1, 1]
    for i in range(2):
        assert steps[i][-1].draft.report == alone[i][-1].draft.report
        assert steps[i][-1].batch["batch_rows"] == 1


def test_int8_drafts_are_not_shared_and_equal_their_single_runs(model_dir, tmp_path) -> None:
    """Dynamic int8 scales a layer's input over the whole batch: such drafts run alone, whatever arrives with
    them (the batcher would otherwise wait for its second row here: max_batch 2, a 10 s window)."""
    config = SamplerConfig(max_new_tokens=16)
    alone = [list(_stream(_service(model_dir, tmp_path / "alone", max_batch=1, quantize="int8"), i, config))
             for i in range(2)]
    shared = _service(model_dir, tmp_path / "shared", max_batch=2, quantize="int8")
    assert quantization_of(_model(shared)) == "int8-dynamic"
    steps = _concurrently(shared, config, 2)
    assert sorted(shared.drafting.batcher.batches) == [1, 1]
    for i in range(2):
        assert steps[i][-1].draft.report == alone[i][-1].draft.report
        assert steps[i][-1].batch["batch_rows"] == 1
    fp32 = _service(model_dir, tmp_path / "fp32", max_batch=2)
    _concurrently(fp32, config, 2)
    assert fp32.drafting.batcher.batches == [2]  # the same two drafts share a batch with fp32 weights


# ------------------------------------------------------------------ the batcher and the gate alone
def _fake_start(log: list[str], blocks: int = 3, *, block_s: float = 0.0) -> Any:
    """A stand-in sampler: ``blocks`` block events per row (``block_s`` each), then the results; ``log`` records
    each block."""

    def start(prompts: Sequence[Any]) -> Generator[Any, None, list[Any]]:
        for k in range(blocks):
            time.sleep(block_s)
            log.append(f"block {k} of {len(prompts)}")
            for i, prompt in enumerate(prompts):
                done = k == blocks - 1
                yield SimpleNamespace(sample=i, block=k, done=done, result=f"{prompt} result" if done else None)
        return [f"{p} result" for p in prompts]

    return start


def _row(name: str, start: Any, *, temperature: float = 0.0, sampler: str = "echo", seed: int = 1,
         threshold: float = 0.85) -> BatchRow:
    config = SamplerConfig(temperature=temperature, seed=seed, threshold=threshold)
    key = BatchKey.of(model="m", sampler=sampler, config=config)
    return BatchRow(key=key, prompt=name, start=start)


def test_only_rows_with_the_same_model_sampler_and_settings_share_a_batch() -> None:
    log: list[str] = []
    batcher = DraftBatcher(workers=1, max_batch=8, window_s=0.2)
    start = _fake_start(log)
    rows = [_row("a", start), _row("b", start, sampler="teacher"), _row("c", start, seed=5),
            _row("d", start, temperature=0.5), _row("e", start, threshold=0.5), _row("f", start, temperature=0.5)]
    for row in rows:
        batcher.submit(row)
    results = [list(row.events()) for row in rows]
    assert [len(r) for r in results] == [3] * 6
    # a+c together (greedy: the seed does not matter); the teacher, another threshold and each sampled draft alone
    assert sorted(batcher.batches) == [1, 1, 1, 1, 2]
    assert rows[0].figures.batch_rows == rows[2].figures.batch_rows == 2
    assert all(rows[i].figures.batch_rows == 1 for i in (1, 3, 4, 5))


def test_the_batch_stops_when_every_row_is_cancelled() -> None:
    log: list[str] = []
    batcher = DraftBatcher(workers=1, max_batch=2, window_s=5.0)
    rows = [batcher.submit(_row(name, _fake_start(log, blocks=50, block_s=0.02))) for name in "ab"]
    streams = [row.events() for row in rows]
    for stream in streams:
        next(stream)
        stream.close()
    follower = batcher.submit(_row("c", _fake_start(log, blocks=2)))
    assert len(list(follower.events())) == 2  # the worker went on to the next batch
    assert sum(1 for line in log if line.endswith("of 2")) < 50


def test_a_failing_batch_raises_in_every_row_and_the_worker_goes_on() -> None:
    def broken(prompts: Sequence[Any]) -> Generator[Any, None, list[Any]]:
        raise RuntimeError("model exploded")
        yield  # a generator

    batcher = DraftBatcher(workers=1, max_batch=2, window_s=5.0)
    rows = [batcher.submit(_row(name, broken)) for name in "ab"]
    for row in rows:
        with pytest.raises(RuntimeError, match="model exploded"):
            list(row.events())
    assert len(list(batcher.submit(_row("c", _fake_start([]))).events())) == 3


def test_gate_counts_studies_and_a_whole_slot_waits_for_every_shared_row() -> None:
    gate = GenerationGate(slots=1, max_waiting=1, rows_per_slot=3, poll_s=0.01)
    with gate.admitted(shared=True), gate.admitted(shared=True), gate.admitted(shared=True):
        assert (gate.running_rows, gate.running) == (3, 1)
        entered = threading.Event()

        def exclusive() -> None:
            with gate.admitted():
                entered.set()

        thread = threading.Thread(target=exclusive)
        thread.start()
        assert not entered.wait(0.1)  # the race's whole slot waits for the rows to finish
        with pytest.raises(DraftingBusyError, match="3 report"), gate.admitted(shared=True):
            pass
    thread.join(5)
    assert entered.is_set() and gate.running_rows == 0


@pytest.mark.parametrize("env,pattern", [({"ECHO_MAX_BATCH": "0"}, "ECHO_MAX_BATCH"),
                                         ({"ECHO_BATCH_WINDOW_MS": "-5"}, "ECHO_BATCH_WINDOW_MS")])
def test_batch_settings_refuse_impossible_values(env: dict[str, str], pattern: str) -> None:
    from app.settings import SettingsError

    with pytest.raises(SettingsError, match=pattern):
        AppSettings.from_env(env)


def test_batch_settings_come_from_the_environment() -> None:
    s = AppSettings.from_env({"ECHO_MAX_BATCH": "4", "ECHO_BATCH_WINDOW_MS": "20"})
    assert (s.max_batch, s.batch_window_ms) == (4, 20)
    assert Services(settings=s, drafting=DraftingService(s), store=None).gate.capacity == 4  # type: ignore[arg-type]


def test_generate_handler_drafts_share_a_batch_and_record_where_the_time_went(model_dir, tmp_path) -> None:
    """Two *Generate* presses at once, through the handler: one batch, each draft saved with its own figures."""
    from app.handlers import DRAFT_FIELDS, Handlers

    services = _service(model_dir, tmp_path, max_batch=2)
    handlers = Handlers(services)
    field_index = {name: i for i, name in enumerate(DRAFT_FIELDS)}
    outputs: list[list[tuple[Any, ...]]] = [[], []]
    start = threading.Barrier(2)

    def press(i: int) -> None:
        folder = services.settings.upload_cache_dir / f"upload-{i}"
        folder.mkdir(parents=True)
        synthetic_cxr(i, (256, 240)).save(folder / "view.png")
        start.wait()
        outputs[i] = list(handlers.generate([str(folder / "view.png")], INDICATIONS[i] or "", "en", "", "echo", 16,
                                            0.0, 0.85, 0, "", None, progress=lambda *a, **k: None))

    threads = [threading.Thread(target=press, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert services.drafting.batcher.batches == [2]
    reports = set()
    for updates in outputs:
        last = updates[-1]
        timing, draft_id = last[field_index["timing"]], last[field_index["draft_id"]]
        stored = services.store.get_draft(draft_id, services.settings.local_user)
        assert stored.timings["batch_rows"] == timing["batch_rows"] == 2
        assert all(stored.timings[k] >= 0 for k in ("read_s", "gate_s", "encode_s", "queue_s"))
        assert "forwards shared with 1 other draft" in last[field_index["summary"]]
        reports.add(stored.report)
    assert len(reports) == 2  # each client got its own study's draft
