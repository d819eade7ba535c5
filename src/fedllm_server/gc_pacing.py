"""Pacing of the cyclic garbage collector for a server that holds thousands of connections.

Each connection keeps a few hundred GC-tracked objects (peer, protocol, tasks, futures) for as
long as it lives. Left alone, the collector walks all of them on the loop's thread in every full
collection, and a broadcast makes enough short-lived objects to start one: at 10,000 clients
that was an 881 ms pause (bench/scale.py), and the second and third broadcasts took 15.8 /
13.5 s against 8.7 / 8.2 s with the collector off.

So, every ``FREEZE_EVERY_S``, what survived moves to the permanent generation (``gc.freeze()``,
a constant-time list splice): later collections walk only what is new. Frozen objects are
still freed by reference counting the moment they are unreferenced; only garbage in reference
cycles that was frozen while alive stays until the next full collection, which runs every
``FULL_EVERY_S`` (unfreeze, collect, freeze again). That bounds the leak to the cycles made in
one such period and the long pause to one per period instead of about one per broadcast.

Only the process entry point (``fedllm_server.cli.run``) runs the pacer: tests run many daemons
in one process and must not freeze the test process's garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("fedllm.server")

FREEZE_EVERY_S = 10.0
FULL_EVERY_S = 600.0
T = TypeVar("T")


class GcAction(StrEnum):
    FREEZE = "freeze"
    FULL = "full"  # unfreeze, collect everything, freeze again


@dataclass
class GcPacer:
    """When to freeze and when to run a full collection; ``now`` is passed in (no clock)."""

    freeze_every_s: float = FREEZE_EVERY_S
    full_every_s: float = FULL_EVERY_S
    _last_freeze: float | None = None
    _last_full: float | None = None

    def due(self, now: float) -> GcAction | None:
        if self._last_full is None or self._last_freeze is None:
            self._last_full = self._last_freeze = now  # the start counts as both
            return GcAction.FREEZE
        if now - self._last_full >= self.full_every_s:
            self._last_full = self._last_freeze = now
            return GcAction.FULL
        if now - self._last_freeze >= self.freeze_every_s:
            self._last_freeze = now
            return GcAction.FREEZE
        return None

    @property
    def next_check_s(self) -> float:
        return min(self.freeze_every_s, self.full_every_s)


def apply(action: GcAction) -> int:
    """Carry out one action; returns the objects a full collection found unreachable."""
    if action is GcAction.FREEZE:
        gc.freeze()
        return 0
    gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    return found


async def pace_forever(pacer: GcPacer | None = None) -> None:
    """The process's pacer task: cancel it to stop."""
    pacer = pacer or GcPacer()
    while True:
        action = pacer.due(time.monotonic())
        if action is GcAction.FULL:
            started = time.perf_counter()
            found = apply(action)
            pause_ms = round((time.perf_counter() - started) * 1000, 1)
            log.debug("gc_full_collection", unreachable=found, pause_ms=pause_ms)
        elif action is not None:
            apply(action)
        await asyncio.sleep(pacer.next_check_s)


async def with_gc_pacing(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` (the daemon) with the pacer beside it on the same loop."""
    pacer = asyncio.create_task(pace_forever(), name="gc-pacer")
    try:
        return await main
    finally:
        pacer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pacer
