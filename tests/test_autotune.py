"""The system-aware b' (Section 3.3) with fake timings."""

from __future__ import annotations

import pytest

from lightning_asyncsam.ascent.autotune import AscentBatchTuner


def _run(tuner: AscentBatchTuner, descent_ms_per_sample: float, ascent_ms_per_sample: float, steps: int = 30,
         overhead_ms: float = 0.0) -> list[bool]:
    settled = []
    for _ in range(steps):
        n = tuner.value
        settled.append(tuner.observe(window_ms=descent_ms_per_sample * tuner.batch_size,
                                     ascent_ms=overhead_ms + ascent_ms_per_sample * n, samples=n))
    return settled


@pytest.mark.parametrize(("tf", "ts", "expected"), [(4.1, 20.3, 23), (1.0, 1.0, 115), (1.0, 3.0, 38), (1.0, 0.5, 128)])
def test_converges_to_b_times_tf_over_ts(tf: float, ts: float, expected: int) -> None:
    tuner = AscentBatchTuner(128)
    _run(tuner, tf, ts)
    assert tuner.value == expected  # floor(0.9 * 128 * tf / ts), clamped to [1, b]


def test_settles_exactly_once_and_says_so() -> None:
    tuner = AscentBatchTuner(128)
    settled = _run(tuner, 4.1, 20.3)
    assert settled.count(True) == 1 and tuner.settled
    line = tuner.describe("cuda:0", "cpu", 8)
    assert line.startswith("AsyncSAM: ascent batch 23 of 128 (descent 4.1 ms/sample on cuda:0, ascent 20.3 ms/sample")
    assert line.endswith("on cpu x8)")


def test_follows_a_worker_that_slows_down_and_speeds_up() -> None:
    tuner = AscentBatchTuner(128)
    _run(tuner, 1.0, 1.0)
    high = tuner.value
    _run(tuner, 1.0, 4.0)  # the worker now makes the main process wait: b' must shrink
    low = tuner.value
    _run(tuner, 1.0, 1.0)  # and grow back once it is idle again
    assert low < high and low == 28 and tuner.value == high


def test_fixed_overhead_is_absorbed() -> None:
    tuner = AscentBatchTuner(128)
    _run(tuner, 1.0, 1.0, steps=60, overhead_ms=10.0)
    # the ascent of b' samples plus overhead must fit in the window of 128 ms
    assert 10.0 + tuner.value * 1.0 <= 128.0 and tuner.value >= 90


def test_never_leaves_one_to_b() -> None:
    tiny = AscentBatchTuner(4)
    _run(tiny, 1.0, 1000.0)
    assert tiny.value == 1
    _run(tiny, 1000.0, 1.0)
    assert tiny.value == 4


def test_ignores_empty_measurements() -> None:
    tuner = AscentBatchTuner(64)
    before = tuner.value
    assert tuner.observe(window_ms=0.0, ascent_ms=5.0, samples=4) is False
    assert tuner.observe(window_ms=5.0, ascent_ms=5.0, samples=0) is False
    assert tuner.value == before


@pytest.mark.parametrize(("kwargs", "match"), [({"batch_size": 0}, "batch_size"), ({"batch_size": 8, "margin": 0}, "margin")])
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        AscentBatchTuner(**kwargs)


def test_warns_only_when_b_over_b_prime_leaves_the_papers_range() -> None:
    near = AscentBatchTuner(128)
    _run(near, 1.0, 3.0)  # b' = 38: b/b' = 3.4, inside what Table 4.2 found harmless
    assert near.advice("cpu") is None
    far = AscentBatchTuner(128)
    _run(far, 0.088, 7.2)  # measured on an H200 with an 8-thread CPU worker: b' = 1
    assert far.value == 1
    assert "b / b' = 128 is far past the paper's range" in far.advice("cpu")
