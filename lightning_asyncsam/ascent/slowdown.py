"""b' for an ascent that shares the trainer's device: the largest that slows the trainer by at most ``max_slowdown``.

Section 3.3's rule (:mod:`lightning_asyncsam.ascent.autotune`) sizes b' so that the ascent
finishes inside the descent step: right when the ascent has a device of its own. When it shares
the trainer's device (the same GPU, or the CPU cores when the trainer computes on the CPU), the
ascent does not wait for a window, it *takes* from the trainer: every sample it computes slows
the trainer's step a little. Then the question is how much slowdown to accept, and the answer is
measured, not modelled:

* the *baseline* is the trainer's step time with no ascent running. The controller takes it from
  probe steps on which no ascent is submitted: the first steps, and one every ``probe_every``
  steps after that, so that it follows the run (data loading, thermal state, other jobs);
* the slowdown of a step is ``step / baseline - 1``. Contention grows about linearly with the
  ascent's work, so ``slowdown ~= k * b'``; the controller keeps a moving average of k and sets
  ``b' = margin * max_slowdown / k``, clamped to [1, b]. A step with no measurable slowdown grows
  b' geometrically instead, up to b.

Example::

    >>> c = SlowdownController(batch_size=128, max_slowdown=0.03)
    >>> for step in range(200):  # a trainer step of 10 ms, plus 0.01 ms per ascent sample
    ...     n = c.ascent_size(step)
    ...     _ = c.observe(step, 10.0 + 0.01 * n, n)
    >>> c.value  # 0.03 * 10 ms / 0.01 ms = 30, times the margin
    27
    >>> round(c.slowdown, 3)
    0.027
"""

from __future__ import annotations

import math


class SlowdownController:
    """Keeps the trainer's step time within ``max_slowdown`` of its ascent-free baseline.

    Args:
        batch_size: the descent batch size b (the largest b').
        max_slowdown: the slowdown of the trainer's step the ascent may cause (0.03: 3 %).
        margin: fraction of ``max_slowdown`` aimed at, so that noise does not overshoot it.
        smoothing: weight of a new measurement in the moving averages.
        probe_every: one ascent-free probe step every this many steps, after the first probes.
        first_probes: ascent-free steps at the start, before any ascent (the first baseline).
        settle_steps: b' counts as settled after this many steps without a change above ``tolerance``.
        tolerance: relative change of b' still counted as settled.
    """

    def __init__(
        self,
        batch_size: int,
        max_slowdown: float = 0.03,
        margin: float = 0.9,
        smoothing: float = 0.2,
        probe_every: int = 50,
        first_probes: int = 2,
        settle_steps: int = 5,
        tolerance: float = 0.1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"SlowdownController: batch_size must be >= 1, got {batch_size}")
        if not (isinstance(max_slowdown, (int, float)) and math.isfinite(max_slowdown) and max_slowdown > 0):
            raise ValueError(f"max_slowdown={max_slowdown!r} is not allowed: use a finite number > 0 (0.03: 3 %)")
        if probe_every < 2:
            raise ValueError(f"SlowdownController: probe_every must be >= 2, got {probe_every}")
        self.batch_size = batch_size
        self.max_slowdown = float(max_slowdown)
        self.margin = margin
        self.smoothing = smoothing
        self.probe_every = probe_every
        self.first_probes = first_probes
        self.settle_steps = settle_steps
        self.tolerance = tolerance
        self.value = max(1, batch_size // 4)
        self.baseline_ms: float | None = None
        self.step_ms: float | None = None  # moving average of the steps with an ascent
        self.per_sample: float | None = None  # k: slowdown per ascent sample
        self.settled = False
        self._stable = 0

    def is_probe(self, step: int) -> bool:
        """Whether ``step`` runs without an ascent, to measure the baseline."""
        return step < self.first_probes or step % self.probe_every == 0

    def ascent_size(self, step: int) -> int:
        """b' for ``step``: 0 on a probe step."""
        return 0 if self.is_probe(step) else self.value

    @property
    def slowdown(self) -> float:
        """The measured slowdown of the trainer's step, ``step / baseline - 1`` (nan before both exist)."""
        if self.baseline_ms is None or self.step_ms is None:
            return float("nan")
        return self.step_ms / self.baseline_ms - 1.0

    def _ema(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.smoothing) * old + self.smoothing * new

    def observe(self, step: int, step_ms: float, samples: int) -> bool:
        """Record the trainer's wall time of ``step``, which ran beside an ascent of ``samples`` samples.

        Returns:
            True exactly once: on the step at which b' first settles.
        """
        if not math.isfinite(step_ms) or step_ms <= 0:
            return False
        if samples <= 0:
            self.baseline_ms = self._ema(self.baseline_ms, step_ms)
            return False
        if self.baseline_ms is None:
            return False
        self.step_ms = self._ema(self.step_ms, step_ms)
        slowdown = step_ms / self.baseline_ms - 1.0
        if slowdown > 0:
            self.per_sample = self._ema(self.per_sample, slowdown / samples)
            wanted = self.margin * self.max_slowdown / self.per_sample
        else:  # nothing measurable at this b': take more
            wanted = self.value * 1.5
        new = int(min(max(math.floor(wanted + 1e-9), 1), self.batch_size))
        change = abs(new - self.value) / max(self.value, 1)
        self.value = new
        self._stable = self._stable + 1 if change <= self.tolerance else 0
        if not self.settled and self._stable >= self.settle_steps:
            self.settled = True
            return True
        return False

    def describe(self, device: str) -> str:
        """The one line printed when b' settles: the shared device and the slowdown measured there."""
        return (
            f"AsyncSAM: ascent batch {self.value} of {self.batch_size} on {device}, shared with the trainer: "
            f"its step takes {self.step_ms or float('nan'):.3g} ms against {self.baseline_ms or float('nan'):.3g} ms "
            f"without an ascent, a slowdown of {100 * self.slowdown:.1f} % (max_slowdown "
            f"{100 * self.max_slowdown:.0f} %)"
        )


__all__ = ["SlowdownController"]
