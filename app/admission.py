"""Admission control for drafting: a few batches of drafts on the device, a bounded line behind them, the rest
refused.

Why our own instead of Gradio's ``queue(max_size=...)``: Gradio's bound counts every waiting event of
the app, and ``gradio_client`` sends every call through the queue, ``queue=False`` ones included (only
the browser posts those directly). With a full line of drafts Gradio therefore refused API *saves*
with "Queue is full" too. The app now runs Gradio's queue unbounded and bounds only the drafts here,
so a save, signature or export is never refused for load, and a refused draft gets a message of ours
that says what is busy and what still works.

The gate is shared by every event that drafts on the device (``Services.gate``); events that use it
are wired with ``concurrency_limit=None`` so that Gradio hands them over at once and the line is kept
here (first come, first served), where its length is known.

The gate counts **per replica**: each ``echo-app`` process admits drafts for its own device and knows
nothing of the others. With N replicas behind a load balancer the site drafts up to N times
``ECHO_GENERATION_CONCURRENCY * ECHO_MAX_BATCH`` studies at once and each replica keeps its own line of
``ECHO_QUEUE_SIZE``; a draft refused as busy on one replica may find room on another (the balancer's
choice). ``GET /healthz`` reports this replica's counts (:mod:`app.health`).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator

__all__ = ["DraftingBusyError", "GenerationGate"]


class DraftingBusyError(ValueError):
    """Every drafting slot is taken and the line is full; the message says so and what still works."""


class GenerationGate:
    """``slots`` device runs at once, each a batch of up to ``rows_per_slot`` studies; at most ``max_waiting``
    drafts wait in line (FIFO); further ones are refused.

    Admission counts studies (rows): the device holds ``slots * rows_per_slot`` of them. A *shared*
    admission (a draft that may join a batch of others, :mod:`app.batching`) takes one row; a plain
    admission takes a whole slot (``rows_per_slot`` rows), for work that must have the device to itself:
    the race times its arms, so it holds every slot. With ``rows_per_slot=1`` both are the same.

    Args:
        slots: device runs at once (``ECHO_GENERATION_CONCURRENCY``).
        max_waiting: drafts allowed to wait for room (``ECHO_QUEUE_SIZE``).
        rows_per_slot: studies one run may decode together (``ECHO_MAX_BATCH``).
        poll_s: how often a waiting draft re-checks its place (it is also woken when room frees).
    """

    def __init__(self, *, slots: int, max_waiting: int, rows_per_slot: int = 1, poll_s: float = 0.5):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        if rows_per_slot < 1:
            raise ValueError(f"rows_per_slot must be >= 1, got {rows_per_slot}")
        self.slots = slots
        self.max_waiting = max_waiting
        self.rows_per_slot = rows_per_slot
        self.poll_s = poll_s
        self._cond = threading.Condition()
        self._line: deque[object] = deque()
        self._rows = 0  # rows taken (a whole slot counts rows_per_slot)
        self._holders = 0  # admissions holding room: the drafts (or races) on the device

    @property
    def capacity(self) -> int:
        """Studies the device holds at once (``slots * rows_per_slot``)."""
        return self.slots * self.rows_per_slot

    @property
    def running(self) -> int:
        """Slots in use (a slot is in use while any of its rows is)."""
        with self._cond:
            return -(-self._rows // self.rows_per_slot)

    @property
    def running_rows(self) -> int:
        """Studies admitted (drafting, or gathered for the next batch)."""
        with self._cond:
            return self._rows

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._line)

    @contextlib.contextmanager
    def admitted(self, *, on_wait: Callable[[int], None] | None = None, shared: bool = False) -> Iterator[None]:
        """Hold room on the device for the ``with`` body; wait in line for it, or refuse at once when the line is full.

        Args:
            on_wait: called (outside the lock) with the number of drafts ahead whenever it changes while
                waiting, e.g. to show a progress message.
            shared: take one row of a batch (a draft) instead of a whole slot (the device alone).

        Raises:
            DraftingBusyError: the line already holds ``max_waiting`` drafts and there is no room.
        """
        ticket = object()
        cost = 1 if shared else self.rows_per_slot
        with self._cond:
            if self._rows + cost > self.capacity and len(self._line) >= self.max_waiting:
                raise DraftingBusyError(
                    f"The drafting queue is full: {self._holders} report(s) being drafted and {len(self._line)} "
                    "waiting. Try again in a minute; saving, signing and exporting still work."
                )
            self._line.append(ticket)
        try:
            self._wait_turn(ticket, cost, on_wait)
        except BaseException:
            with self._cond:
                if ticket in self._line:
                    self._line.remove(ticket)
                self._cond.notify_all()
            raise
        try:
            yield
        finally:
            with self._cond:
                self._rows -= cost
                self._holders -= 1
                self._cond.notify_all()

    def _wait_turn(self, ticket: object, cost: int, on_wait: Callable[[int], None] | None) -> None:
        reported: int | None = None
        while True:
            with self._cond:
                if self._line[0] is ticket and self._rows + cost <= self.capacity:
                    self._line.popleft()
                    self._rows += cost
                    self._holders += 1
                    self._cond.notify_all()  # with room for several the next in line may start too
                    return
                ahead = self._holders + self._line.index(ticket)
                if ahead == reported or on_wait is None:
                    self._cond.wait(self.poll_s)
                    continue
            reported = ahead
            on_wait(ahead)
