"""The system-aware ascent batch size b' of Section 3.3.

The paper sets ``b' = (T_f / T_s) * b``: T_f is the per-sample gradient time on the fast device
(the descent), T_s the per-sample gradient time on the slow one (the ascent worker). Then the
ascent of b' samples takes as long as the descent of b samples, and hides behind it.

We measure both on the real model and data while training runs:

* the *window*: the main process's time from handing step t-1 to the worker until it asks for the
  result at step t. This is everything the worker can overlap with (forward, backward, optimizer
  step, data loading, logging), so T_f = window / b;
* the worker's own compute time for its n samples, so T_s = ascent / n.

Hence ``b' = b * T_f / T_s = n * window / ascent``, times a safety margin below 1 so that timing
noise does not make the main process wait. Both times are smoothed with an exponential moving
average, and b' keeps following them: a worker that makes the main process wait (ascent > window)
shrinks b', an idle one (ascent < window) grows it.

Limits (Table 4.2 of the paper): accuracy holds while b / b' <= 3 and drops slowly beyond; a
worker more than about 5x slower than the main device costs accuracy, not time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# b / b' beyond which the paper measured a real loss of accuracy (Table 4.2: fine up to ~3, still
# well above SGD at 5): past this, "auto" keeps SGD's speed but no longer delivers SAM's accuracy.
SAFE_RATIO = 5.0


@dataclass
class TunerState:
    """Smoothed measurements, in milliseconds."""

    window_ms: float | None = None
    ascent_ms_per_sample: float | None = None
    descent_ms_per_sample: float | None = None


class AscentBatchTuner:
    """Chooses b' from measured descent and ascent speeds.

    Args:
        batch_size: the descent batch size b.
        margin: fraction of the descent window the ascent may fill.
        smoothing: weight of a new measurement in the moving averages.
        settle_steps: b' counts as settled after this many steps without a change above ``tolerance``.
        tolerance: relative change of b' still counted as settled.
        initial_fraction: b' / b before anything has been measured.

    Example::

        >>> tuner = AscentBatchTuner(batch_size=128)
        >>> tuner.value
        32
        >>> for _ in range(20):  # descent 4 ms/sample, ascent 20 ms/sample: b' = 128 * 4 / 20 * 0.9
        ...     _ = tuner.observe(window_ms=512.0, ascent_ms=20.0 * tuner.value, samples=tuner.value)
        >>> tuner.value
        23
    """

    def __init__(
        self,
        batch_size: int,
        margin: float = 0.9,
        smoothing: float = 0.3,
        settle_steps: int = 5,
        tolerance: float = 0.1,
        initial_fraction: float = 0.25,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"AscentBatchTuner: batch_size must be >= 1, got {batch_size}")
        if not 0.0 < margin <= 1.0:
            raise ValueError(f"AscentBatchTuner: margin must be in (0, 1], got {margin}")
        self.batch_size = batch_size
        self.margin = margin
        self.smoothing = smoothing
        self.settle_steps = settle_steps
        self.tolerance = tolerance
        self.value = self._clamp(math.floor(batch_size * initial_fraction))
        self.state = TunerState()
        self._stable = 0
        self.settled = False

    def _clamp(self, n: float) -> int:
        return int(min(max(math.floor(n), 1), self.batch_size))

    def _ema(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.smoothing) * old + self.smoothing * new

    def observe(self, window_ms: float, ascent_ms: float, samples: int) -> bool:
        """Record one step and update b'.

        Args:
            window_ms: main-process time the worker could overlap with during that step.
            ascent_ms: the worker's compute time for that step.
            samples: how many samples the worker processed.

        Returns:
            True exactly once: on the step at which b' first settles.
        """
        if samples < 1 or ascent_ms <= 0 or window_ms <= 0:
            return False
        s = self.state
        s.window_ms = self._ema(s.window_ms, window_ms)
        s.ascent_ms_per_sample = self._ema(s.ascent_ms_per_sample, ascent_ms / samples)
        s.descent_ms_per_sample = s.window_ms / self.batch_size
        new = self._clamp(self.margin * self.batch_size * s.descent_ms_per_sample / s.ascent_ms_per_sample)
        change = abs(new - self.value) / max(self.value, 1)
        self.value = new
        self._stable = self._stable + 1 if change <= self.tolerance else 0
        if not self.settled and self._stable >= self.settle_steps:
            self.settled = True
            return True
        return False

    def advice(self, ascent_device: str) -> str | None:
        """A warning when b' settled so small that the perturbation is weak (b / b' > ``SAFE_RATIO``).

        Example::

            >>> tuner = AscentBatchTuner(batch_size=128)
            >>> tuner.value = 1
            >>> print(tuner.advice("cpu"))  # doctest: +ELLIPSIS
            AsyncSAM: b / b' = 128 is far past the paper's range (<= 3, Table 4.2): the ascent on cpu ...
        """
        ratio = self.batch_size / self.value
        if ratio <= SAFE_RATIO:
            return None
        return (
            f"AsyncSAM: b / b' = {ratio:.0f} is far past the paper's range (<= 3, Table 4.2): the ascent on "
            f"{ascent_device} is too slow for this model to keep up with the descent, so training runs at "
            "SGD's speed but gets little of SAM's gain. Give the worker more threads (ascent_threads), a "
            "faster device (ascent_device='cuda:1'), or pin ascent_batch_size (the main process then waits)."
        )

    def describe(self, main_device: str, ascent_device: str, threads: int) -> str:
        """The one line printed when b' settles."""
        s = self.state
        return (
            f"AsyncSAM: ascent batch {self.value} of {self.batch_size} "
            f"(descent {s.descent_ms_per_sample or float('nan'):.3g} ms/sample on {main_device}, "
            f"ascent {s.ascent_ms_per_sample or float('nan'):.3g} ms/sample on {ascent_device} x{threads})"
        )
