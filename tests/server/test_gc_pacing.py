"""The server's GC pacer: when it freezes and collects, and that a full collection still frees
cyclic garbage that was frozen while alive (the leak the pacer bounds)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from fedllm_server.gc_pacing import GcAction, GcPacer


def test_the_pacer_freezes_at_start_then_on_its_period_and_collects_fully_on_its_own() -> None:
    pacer = GcPacer(freeze_every_s=10.0, full_every_s=60.0)
    assert pacer.due(100.0) is GcAction.FREEZE  # what start-up made
    assert pacer.due(105.0) is None
    assert pacer.due(110.0) is GcAction.FREEZE
    assert pacer.due(119.9) is None
    assert pacer.due(120.0) is GcAction.FREEZE
    assert pacer.due(160.0) is GcAction.FULL  # 60 s after the start, instead of a freeze
    assert pacer.due(169.0) is None  # the full collection froze too: the period restarts
    assert pacer.due(170.0) is GcAction.FREEZE
    assert pacer.next_check_s == 10.0


def test_a_full_collection_frees_frozen_cycles_and_freezes_the_survivors() -> None:
    # In a child process: freezing the test process's own garbage would leak it for the run.
    script = textwrap.dedent(
        """
        import gc, weakref
        from fedllm_server.gc_pacing import GcAction, apply

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a          # a reference cycle: only the cyclic GC frees it
        gone = weakref.ref(a)
        keep = Node()
        apply(GcAction.FREEZE)
        frozen = gc.get_freeze_count()
        del a, b
        gc.collect()
        survived_plain_collect = gone() is not None
        found = apply(GcAction.FULL)
        print(frozen > 0, survived_plain_collect, gone() is None, found >= 2,
              gc.get_freeze_count() > 0, gc.is_tracked(keep))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["True"] * 6, out.stderr
