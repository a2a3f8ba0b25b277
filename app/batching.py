"""Shared batches: drafts that wait for the device together are decoded together, in one batch's forwards.

Why: the samplers decode a batch of B studies in the forwards of one (each prompt left-padded by a multiple
of b, so every row keeps the block grid of its single run: tested equal to single runs), while the app
used to run each draft alone. Eight radiologists pressing *Generate* in the same minute paid eight times
the forwards.

How: each draft is encoded in its own thread (images -> prompt) and handed to :meth:`DraftBatcher.submit`
as a :class:`BatchRow`. A device worker (one per ``ECHO_GENERATION_CONCURRENCY`` slot) takes the oldest
waiting row, gathers the rows that can share its batch (same :class:`BatchKey`: model, sampler and the
decoding settings) for at most ``window_s`` after that row arrived, or until ``max_batch`` are there, and
runs the sampler on them (the app's default window is 0: a free worker takes what is waiting at once, so a
lone draft's first block is not held back). Drafts that arrive while a batch runs are gathered into the next one (joining a
running batch would change its padding and block grid, so the worker never does). The sampler yields a
:class:`~echo_model.sampling.BlockEvent` per row and block; each goes to its row's queue, so every client
sees its own blocks and its own figures, and a row's last event carries its finished result, so a short
report is handed on while longer ones still decode.

Cancelling a row (the client stops or disconnects) only marks it: its events are dropped, the batch goes on
for the others, and the worker closes the sampler when every row is finished or cancelled. Sampled drafts
(temperature > 0) are never shared: one sampling generator serves a whole batch, so a shared row would not
draw the tokens it draws alone; they run as batches of one. Neither are drafts of int8 weights
(``ECHO_QUANTIZE=int8``): dynamic int8 scales a layer's input over the whole batch, so a row's numbers would
depend on its companions.

This module holds no model code: the rows bring the function that starts their sampler.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from echo_model.processing import StudyPrompt
    from echo_model.sampling import BlockEvent, GenerationResult, SamplerConfig

__all__ = ["SWITCH_INTERVAL_S", "BatchKey", "BatchRow", "DraftBatcher", "RowFigures", "tune_for_drafting"]

log = logging.getLogger(__name__)

#: The interpreter's thread switch interval while the app serves drafts (Python's default is 5 ms).
SWITCH_INTERVAL_S = 0.0005

#: Starts the sampler on a batch of prompts: yields block events (``sample`` = row), returns the results.
StartBatch = Callable[[Sequence["StudyPrompt"]], Generator["BlockEvent", None, list["GenerationResult"]]]


@dataclass(frozen=True)
class BatchKey:
    """What rows must have in common to share a batch: the model, the sampler and its decoding settings.

    The prompt (views, indication, language, a re-draft's kept text) is per row; everything the sampling
    loop reads is here. ``alone`` is a fresh object for a row that must not share (sampled drafts).
    """

    model: str
    sampler: str
    config: SamplerConfig
    alone: object | None = None

    @classmethod
    def of(cls, *, model: str, sampler: str, config: SamplerConfig, shares: bool = True) -> BatchKey:
        """The key of a draft; a sampled one (temperature > 0) gets a key of its own, and a greedy one ignores the
        seed (it draws nothing), so greedy drafts that differ only in their seed share a batch.

        ``shares=False`` gives every draft a key of its own: a model whose rows are not independent of each other
        (int8 weights, :func:`echo_model.device.shares_batches`) drafts each study alone, as it would be drafted
        without company."""
        if config.temperature > 0 or not shares:
            return cls(model=model, sampler=sampler, config=config, alone=object())
        return cls(model=model, sampler=sampler, config=dataclasses.replace(config, seed=None))


@dataclass
class RowFigures:
    """What one row's draft cost in the batcher (stored with the draft's timings).

    Attributes:
        encode_s: images -> prompt (the row's own thread, before it waits).
        queue_s: from being handed over to its batch starting (the gathering window included).
        batch_rows: rows in the batch when it started (its forwards were shared with ``batch_rows - 1`` others).
    """

    encode_s: float = 0.0
    queue_s: float = 0.0
    batch_rows: int = 1

    def to_json(self) -> dict[str, float | int]:
        return {"encode_s": round(self.encode_s, 4), "queue_s": round(self.queue_s, 4), "batch_rows": self.batch_rows}


@dataclass
class BatchRow:
    """One study waiting for, or decoding in, a shared batch; its events arrive on :meth:`get`.

    Attributes:
        key: which rows it may share a batch with.
        prompt: the encoded study.
        start: runs the sampler on a batch of prompts (the same for every row of a key).
        figures: filled in when the batch starts.
    """

    key: BatchKey
    prompt: StudyPrompt
    start: StartBatch
    figures: RowFigures = field(default_factory=RowFigures)
    submitted: float = field(default_factory=time.perf_counter)
    _events: queue.SimpleQueue[tuple[str, Any]] = field(default_factory=queue.SimpleQueue, repr=False)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop receiving this row's events; the batch goes on for the other rows."""
        self._cancelled.set()

    def put(self, kind: str, item: Any) -> None:
        self._events.put((kind, item))

    def get(self) -> tuple[str, Any]:
        """The next ``("event", BlockEvent)``, ``("end", GenerationResult)`` or ``("error", exception)``."""
        return self._events.get()

    def events(self) -> Generator[BlockEvent, None, GenerationResult]:
        """This row's block events, ending with its result; closing the generator cancels the row."""
        try:
            while True:
                kind, item = self.get()
                if kind == "error":
                    raise item
                if kind == "end":
                    return item
                yield item
                if item.done and item.result is not None:
                    return item.result
        finally:
            self.cancel()  # no effect once the row is finished


class DraftBatcher:
    """Device workers that decode waiting rows in shared batches.

    Args:
        workers: batches on the device at once (``ECHO_GENERATION_CONCURRENCY``).
        max_batch: most rows in one batch (``ECHO_MAX_BATCH``).
        window_s: how long the oldest waiting row waits for others to share its batch
            (``ECHO_BATCH_WINDOW_MS`` / 1000); a batch starts earlier once ``max_batch`` rows are there.
    """

    def __init__(self, *, workers: int, max_batch: int, window_s: float):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s}")
        self.workers, self.max_batch, self.window_s = workers, max_batch, window_s
        self._cond = threading.Condition()
        self._pending: list[BatchRow] = []
        self._threads: list[threading.Thread] = []
        #: rows of every batch run so far, in order
        self.batches: list[int] = []

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._pending)

    def submit(self, row: BatchRow) -> BatchRow:
        """Queue ``row`` for the next batch of its key; its events then arrive on ``row.events()``."""
        with self._cond:
            if not self._threads:
                self._threads = [threading.Thread(target=self._work, name=f"echo-batch-{i}", daemon=True)
                                 for i in range(self.workers)]
                for thread in self._threads:
                    thread.start()
            row.submitted = time.perf_counter()
            self._pending.append(row)
            self._cond.notify_all()
        return row

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            rows = self._next_batch()
            try:
                self._run(rows)
            except Exception:  # already handed to the batch's rows; the worker lives on
                log.exception("a shared drafting batch failed")

    def _next_batch(self) -> list[BatchRow]:
        """The oldest waiting row and the rows that may share its batch, once the window closes or it is full."""
        with self._cond:
            while True:
                self._pending = [r for r in self._pending if not r.cancelled]
                if not self._pending:
                    self._cond.wait()
                    continue
                first = self._pending[0]
                same = [r for r in self._pending if r.key == first.key][: self.max_batch]
                left = first.submitted + self.window_s - time.perf_counter()
                if first.key.alone is None and len(same) < self.max_batch and left > 0:
                    self._cond.wait(left)
                    continue
                taken = {id(r) for r in same}
                self._pending = [r for r in self._pending if id(r) not in taken]
                return same

    def _run(self, rows: list[BatchRow]) -> None:
        """Decode ``rows`` in one batch, handing each its own events; stop when all are finished or cancelled."""
        started = time.perf_counter()
        for row in rows:
            row.figures.queue_s = started - row.submitted
            row.figures.batch_rows = len(rows)
        self.batches.append(len(rows))
        finished = [False] * len(rows)
        events: Generator[BlockEvent, None, list[GenerationResult]] | None = None
        try:
            events = rows[0].start([row.prompt for row in rows])
            while True:
                if all(f or row.cancelled for f, row in zip(finished, rows)):
                    return
                try:
                    event = next(events)
                except StopIteration as stop:  # rows the sampler ended without a last-block flag
                    for i, result in enumerate(stop.value):
                        if not finished[i]:
                            finished[i] = True
                            rows[i].put("end", result)
                    return
                row = rows[event.sample]
                if event.done:
                    finished[event.sample] = True
                if not row.cancelled:
                    row.put("event", event)
        except BaseException as err:
            for f, row in zip(finished, rows):
                if not f:
                    row.put("error", err)
            raise
        finally:
            if events is not None:
                events.close()


def tune_for_drafting(device: str | None, cpu_threads: int | None) -> int | None:
    """Set the served app's process up for a device worker among many web threads; return the torch threads set.

    Why, measured under the load test (docs/speed.md, "Concurrent drafts in the app"): a forward is hundreds
    of short torch ops, each of which gives the GIL up; with a dozen handler threads busy in Python (rendering
    blocks, storing uploads and saves), the worker then waits up to the 5 ms switch interval to get it back
    after every op, and the sampler's time grew 10-30x. A 0.5 ms interval bounds that wait. On a CPU, OpenMP
    threads also wait for each other at every op, so a pool as wide as the machine stalls whenever a web
    thread takes a core: the pool gets ``cpu_threads`` (``ECHO_CPU_THREADS``; unset = every core but one,
    left to the web threads). On a GPU the thread pool is left as it is.
    """
    import os
    import sys

    import torch

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    on_gpu = (device or "").startswith("cuda") or (device is None and torch.cuda.is_available())
    if on_gpu:
        return None
    threads = cpu_threads if cpu_threads is not None else max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(threads)
    return threads
