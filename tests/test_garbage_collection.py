"""The step loops' garbage collection (nemo_ext/garbage_collection.py, ``trainer.gc_interval``; the RL loop's
is checked end to end in tests/test_rl_integration.py), and the pause recorder the benches use."""

from __future__ import annotations

import gc
import weakref

import pytest

from nemo_ext.config.rl import RLTrainerConfig
from nemo_ext.config.schema import SFTTrainerConfig
from nemo_ext.garbage_collection import collect_between_steps


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


def cycle() -> weakref.ref:
    return weakref.ref(Node())


def test_cycles_live_until_the_interval_then_go():
    with collect_between_steps(3) as collector:
        assert not gc.isenabled()
        made = []
        for step in range(1, 4):
            made.append(cycle())
            for _ in range(20_000):  # enough allocations to trip Python's own thresholds many times
                Node()
            if step < 3:
                collector.after_step(step)
                assert all(r() is not None for r in made), f"a cycle went before the interval, step {step}"
        collector.after_step(3)
        assert all(r() is None for r in made)
    assert gc.isenabled()


def test_what_existed_at_entry_is_frozen_then_thawed():
    before = gc.get_freeze_count()
    with collect_between_steps(100):
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == before


def test_interval_zero_leaves_pythons_collector_alone():
    with collect_between_steps(0) as collector:
        assert gc.isenabled()
        ref = cycle()
        collector.after_step(1)
        gc.collect()
        assert ref() is None


def test_the_collector_comes_back_after_an_error():
    with pytest.raises(RuntimeError), collect_between_steps(10):
        raise RuntimeError("a step failed")
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_negative_interval_is_refused_by_name():
    for trainer in (SFTTrainerConfig, RLTrainerConfig):
        with pytest.raises(ValueError, match="gc_interval"):
            trainer(gc_interval=-1)
    with pytest.raises(ValueError, match="gc_interval"), collect_between_steps(-1):
        pass


def test_pause_recorder_sees_each_collection_with_its_generation():
    from nemo_ext.garbage_collection import record_pauses

    with record_pauses() as recorder:
        gc.collect(0)
        gc.collect(2)
    assert [g for g, _ in recorder.pauses] == [0, 2]
    assert all(t >= 0 for _, t in recorder.pauses)
    assert recorder.seconds(2) == recorder.pauses[1][1] and recorder.seconds() >= recorder.seconds(2)
    assert recorder not in gc.callbacks
