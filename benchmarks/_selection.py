"""The radius selection of ``accuracy.py``: pure functions, tested in tests/test_accuracy_selection.py.

Each algorithm with a radius gets it chosen the same way: fit on part of the noisy training set,
score against the held-out noisy labels, mean over seeds, best mean wins, ties to the smaller radius.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.model_selection import train_test_split

#: Two means closer than this are a tie (accuracies are multiples of 1/n; float sums differ in the last bits).
TIE = 1e-9


def parse_radii(text: str) -> list[float]:
    """``"0.05,0.1,0.2"`` -> ``[0.05, 0.1, 0.2]``: sorted, without repeats.

    Raises:
        ValueError: an entry is not a number, or not positive, or there is none.
    """
    try:
        radii = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError as err:
        raise ValueError(f"{text!r}: expected comma-separated numbers, e.g. 0.05,0.1,0.2") from err
    if not radii or radii[0] <= 0 or not all(np.isfinite(radii)):
        raise ValueError(f"{text!r}: expected one or more positive radii")
    return radii


def holdout_indices(labels: Sequence[int], fraction: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held out) of a fixed split stratified on ``labels`` (the noisy ones), ``fraction`` held out.

    Raises:
        ValueError: ``fraction`` is not in (0, 1).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    fit, held_out = train_test_split(np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(fit), np.sort(held_out)


def select_radius(scores: Mapping[float, Sequence[float]]) -> float:
    """The radius with the best mean score; of those within ``TIE`` of it, the smallest.

    Raises:
        ValueError: no radius, or a radius without scores.
    """
    if not scores or not all(len(s) for s in scores.values()):
        raise ValueError("every candidate radius needs at least one score")
    means = {rho: statistics.fmean(s) for rho, s in scores.items()}
    best = max(means.values())
    return min(rho for rho, mean in means.items() if mean >= best - TIE)


def peak_accuracies(histories: Sequence[Sequence[Sequence[float]]]) -> list[float]:
    """Each run's best accuracy over its epochs, from ``[[time, accuracy], ...]`` curves (one per run)."""
    return [max(acc for _, acc in history) for history in histories if history]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
