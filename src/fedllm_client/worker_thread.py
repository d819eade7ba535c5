"""``WorkerThread``: the one thread that runs all model work off the event loop.

Rules: every call that touches torch (build, step, evaluate, state copies) runs on this ONE
thread, so the event loop keeps answering heartbeats and broadcasts while a step runs, and model
state is never touched by two threads at once. A submitted job always runs to its end.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class WorkerThread:
    """One thread for all model work; ``await run(fn, *args)`` from the event loop."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedllm-trainer")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        ctx = contextvars.copy_context()  # structlog's bound client_id / model_version
        call = functools.partial(ctx.run, fn, *args)
        job = asyncio.get_running_loop().run_in_executor(self._pool, call)
        # A submitted job always runs to the end, even if the awaiting task is cancelled (a
        # lost connection): half the model work done, the other half silently dropped, would
        # leave the state inconsistent. Later jobs queue behind it on the one thread.
        return await asyncio.shield(job)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
