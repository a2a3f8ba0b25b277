"""Admission control for drafting: a few drafts on the device, a bounded line behind them, the rest refused.

Why our own instead of Gradio's ``queue(max_size=...)``: Gradio's bound counts every waiting event of
the app, and ``gradio_client`` sends every call through the queue, ``queue=False`` ones included (only
the browser posts those directly). With a full line of drafts Gradio therefore refused API *saves*
with "Queue is full" too. The app now runs Gradio's queue unbounded and bounds only the drafts here,
so a save, signature or export is never refused for load, and a refused draft gets a message of ours
that says what is busy and what still works.

The gate is shared by every event that drafts on the device (``Services.gate``); events that use it
are wired with ``concurrency_limit=None`` so that Gradio hands them over at once and the line is kept
here (first come, first served), where its length is known.
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
    """``slots`` drafts run at once; at most ``max_waiting`` wait in line (FIFO); further ones are refused.

    Args:
        slots: drafts running at once (``ECHO_GENERATION_CONCURRENCY``).
        max_waiting: drafts allowed to wait for a slot (``ECHO_QUEUE_SIZE``).
        poll_s: how often a waiting draft re-checks its place (it is also woken when a slot frees).
    """

    def __init__(self, *, slots: int, max_waiting: int, poll_s: float = 0.5):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        self.slots = slots
        self.max_waiting = max_waiting
        self.poll_s = poll_s
        self._cond = threading.Condition()
        self._line: deque[object] = deque()
        self._running = 0

    @property
    def running(self) -> int:
        with self._cond:
            return self._running

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._line)

    @contextlib.contextmanager
    def admitted(self, *, on_wait: Callable[[int], None] | None = None) -> Iterator[None]:
        """Hold a drafting slot for the ``with`` body; wait in line for it, or refuse at once when the line is full.

        Args:
            on_wait: called (outside the lock) with the number of drafts ahead whenever it changes while
                waiting, e.g. to show a progress message.

        Raises:
            DraftingBusyError: the line already holds ``max_waiting`` drafts and no slot is free.
        """
        ticket = object()
        with self._cond:
            if self._running >= self.slots and len(self._line) >= self.max_waiting:
                raise DraftingBusyError(
                    f"The drafting queue is full: {self._running} report(s) being drafted and {len(self._line)} "
                    "waiting. Try again in a minute; saving, signing and exporting still work."
                )
            self._line.append(ticket)
        try:
            self._wait_turn(ticket, on_wait)
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
                self._running -= 1
                self._cond.notify_all()

    def _wait_turn(self, ticket: object, on_wait: Callable[[int], None] | None) -> None:
        reported: int | None = None
        while True:
            with self._cond:
                if self._line[0] is ticket and self._running < self.slots:
                    self._line.popleft()
                    self._running += 1
                    self._cond.notify_all()  # with several slots the next in line may start too
                    return
                ahead = self._running + self._line.index(ticket)
                if ahead == reported or on_wait is None:
                    self._cond.wait(self.poll_s)
                    continue
            reported = ahead
            on_wait(ahead)
