"""The shared-device b' controller and the "auto" device rule, on fake timings (no clock involved)."""

from __future__ import annotations

import random

import pytest
import torch

from lightning_asyncsam.ascent.devices import resolve_ascent_device
from lightning_asyncsam.ascent.slowdown import SlowdownController


def _run(c: SlowdownController, steps: int, step_ms, start: int = 0) -> list[int]:
    sizes = []
    for step in range(start, start + steps):
        n = c.ascent_size(step)
        c.observe(step, step_ms(step, n), n)
        sizes.append(n)
    return sizes


@pytest.mark.parametrize(("base_ms", "per_sample_ms", "want"), [(10.0, 0.01, 27), (2.6, 0.0052, 13), (8.0, 0.0, 128)])
def test_settles_at_the_largest_b_prime_within_the_slowdown(base_ms, per_sample_ms, want) -> None:
    c = SlowdownController(batch_size=128, max_slowdown=0.03)
    _run(c, 300, lambda step, n: base_ms + per_sample_ms * n)
    assert c.settled and c.value == want
    assert c.slowdown <= 0.03 + 1e-9


def test_noise_does_not_push_the_trainer_past_its_budget() -> None:
    rng = random.Random(0)
    c = SlowdownController(batch_size=256, max_slowdown=0.05)
    true = lambda n: 0.0004 * n  # noqa: E731 - slowdown per sample, noiseless
    _run(c, 2000, lambda step, n: 10.0 * (1 + true(n)) * rng.uniform(0.97, 1.03))
    assert 0.5 * 0.05 <= true(c.value) <= 1.2 * 0.05


def test_probes_follow_a_baseline_that_changes() -> None:
    c = SlowdownController(batch_size=128, max_slowdown=0.03, probe_every=10)
    _run(c, 300, lambda step, n: 10.0 + 0.01 * n)
    before = c.value
    _run(c, 300, lambda step, n: 20.0 + 0.01 * n, start=300)  # the trainer's step doubles: more room
    assert c.baseline_ms == pytest.approx(20.0, rel=0.01)
    assert c.value == pytest.approx(2 * before, abs=2)


def test_probe_steps_run_no_ascent() -> None:
    c = SlowdownController(batch_size=64, probe_every=25, first_probes=2)
    sizes = _run(c, 101, lambda step, n: 5.0)
    assert [i for i, n in enumerate(sizes) if n == 0] == [0, 1, 25, 50, 75, 100]


def test_describe_names_the_device_and_the_slowdown() -> None:
    c = SlowdownController(batch_size=128)
    _run(c, 100, lambda step, n: 10.0 + 0.01 * n)
    line = c.describe("cuda:0")
    assert "cuda:0" in line and "slowdown of 2.7 %" in line and "max_slowdown 3 %" in line


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), "3%"])
def test_a_bad_max_slowdown_is_named(bad) -> None:
    with pytest.raises(ValueError, match="max_slowdown"):
        SlowdownController(batch_size=8, max_slowdown=bad)


@pytest.mark.parametrize(("device", "used", "visible", "rank", "want"), [
    (torch.device("cuda", 0), [0], 2, 0, "cuda:1"),          # a spare GPU
    (torch.device("cuda", 0), [0, 1], 4, 0, "cuda:2"),       # two ranks, two spares: one each
    (torch.device("cuda", 1), [0, 1], 4, 1, "cuda:3"),
    (torch.device("cuda", 1), [0, 1], 3, 1, "cuda:2"),       # two ranks share the one spare
    (torch.device("cuda", 0), [0], 1, 0, "cpu"),             # no spare GPU: the CPU worker, for now
    (torch.device("cpu"), [], 0, 0, "cpu"),
    (torch.device("cpu"), [], 1, 0, "cuda:0"),               # a CPU trainer beside an unused GPU
])
def test_auto_device_rule(device, used, visible, rank, want) -> None:
    assert resolve_ascent_device("auto", device, used, visible, rank) == want


def test_the_default_ascent_device_is_auto_and_resolves_here() -> None:
    import lightning_asyncsam  # noqa: F401
    from lightning_asyncsam import AsyncSAMStrategy
    from tiny import TinyClassifier, loader, make_data, trainer

    strategy = AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1)
    assert strategy.ascent_device == "auto"
    trainer(strategy, max_epochs=1).fit(TinyClassifier(), loader(make_data(dtype=torch.float32), 8))
    # a CPU trainer: any visible GPU is one that no rank uses
    assert strategy.worker_device == ("cuda:0" if torch.cuda.device_count() else "cpu")
