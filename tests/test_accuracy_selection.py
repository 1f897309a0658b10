"""benchmarks/_selection.py: the radius selection of benchmarks/accuracy.py (pure functions, CPU, fast)."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_scripts import load_benchmark


def _selection():
    return load_benchmark("_selection")


sel = _selection()


def test_parse_radii_sorts_and_drops_repeats() -> None:
    assert sel.parse_radii("0.5, 0.05,0.1,0.5,") == [0.05, 0.1, 0.5]


@pytest.mark.parametrize("text", ["", "0.1,x", "0,0.1", "-0.1", "nan", "inf"])
def test_parse_radii_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        sel.parse_radii(text)


def test_select_radius_best_mean_ties_to_the_smaller() -> None:
    assert sel.select_radius({0.1: [0.5, 0.7], 0.2: [0.6, 0.65], 0.5: [0.4, 0.4]}) == 0.2
    assert sel.select_radius({0.3: [0.3, 0.2, 0.1], 0.1: [0.1, 0.2, 0.3], 1.0: [0.0, 0.0, 0.0]}) == 0.1
    # Means apart by float rounding only are a tie too.
    assert sel.select_radius({0.3: [0.2 + 1e-12], 0.1: [0.2]}) == 0.1
    assert sel.select_radius({0.3: [0.2 + 1e-6], 0.1: [0.2]}) == 0.3
    with pytest.raises(ValueError):
        sel.select_radius({0.1: []})
    with pytest.raises(ValueError):
        sel.select_radius({})


def test_holdout_is_fixed_disjoint_complete_and_stratified() -> None:
    labels = np.repeat(np.arange(10), 20)
    fit, held = sel.holdout_indices(labels, 0.2)
    fit2, held2 = sel.holdout_indices(labels, 0.2)
    assert np.array_equal(held, held2) and np.array_equal(fit, fit2)
    assert len(held) == 40 and not set(fit) & set(held) and sorted([*fit, *held]) == list(range(200))
    assert np.all(np.bincount(labels[held], minlength=10) == 4)
    with pytest.raises(ValueError):
        sel.holdout_indices(labels, 1.0)


def test_peak_accuracies_and_mean_std() -> None:
    histories = [[[1.0, 0.5], [2.0, 0.9], [3.0, 0.7]], [[1.0, 0.6], [2.0, 0.8]]]
    assert sel.peak_accuracies(histories) == [0.9, 0.8]
    assert sel.mean_std([0.5]) == (0.5, 0.0)
    mean, std = sel.mean_std([1.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(2 ** 0.5)
