"""``benchmarks/recipe_pool.py``: earlier recipe_pairs.py results pooled seed by seed, each seed once."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import ModuleType

import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture
def recipe_pool() -> ModuleType:
    """The script, loaded by path."""
    return load_benchmark("recipe_pool")


def _results(path: Path, roots: list[str], seeds: list[str], ratios: list[float], spare: list[str]) -> Path:
    """A results file in the layout recipe_pairs.py writes (its config holds the roots as str(list of Paths))."""
    data = {"config": {"roots": str([f"PosixPath('{r}')" for r in roots]).replace('"', "")},
            "environment": {"git_sha": "0123456789abcdef", "date": "2026-11-30T15:00:00+00:00"},
            "seeds": seeds, "epoch_ratio": ratios, "seeds_with_a_spare_core": spare}
    path.write_text(json.dumps(data))
    return path


def test_a_seed_that_two_files_hold_counts_once(recipe_pool: ModuleType, tmp_path: Path) -> None:
    # A pooled file names its seeds "<root's last name>/<seed>"; a one-root file names them by number.
    pooled = _results(tmp_path / "pooled.json", ["/tmp/a/rp1", "/tmp/a/rp2"], ["rp1/0", "rp1/1", "rp2/0"],
                      [1.0, 1.2, 0.9], ["rp1/0", "rp2/0"])
    again = _results(tmp_path / "again.json", ["/tmp/a/rp1"], ["0", "1"], [1.0, 1.2], ["0"])  # in pooled already
    other = _results(tmp_path / "other.json", ["/tmp/b/rp1"], ["0", "1"], [1.4, 1.1], ["1"])  # same name, new root
    seeds, lines = recipe_pool.pooled([pooled, again, other])
    assert [key for _, key, _, _ in seeds] == ["/tmp/a/rp1/0", "/tmp/a/rp1/1", "/tmp/a/rp2/0", "/tmp/b/rp1/0",
                                               "/tmp/b/rp1/1"]
    assert [ratio for _, _, ratio, _ in seeds] == [1.0, 1.2, 0.9, 1.4, 1.1]
    assert [spare for _, _, _, spare in seeds] == [True, False, True, False, True]
    assert [line.split(" | ")[4] for line in lines] == ["3", "0", "2"]  # seeds taken from each file
    assert statistics.median(r for _, _, r, _ in seeds) == 1.1


def test_the_table_and_results_file(recipe_pool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    one = _results(tmp_path / "one.json", ["/tmp/a/rp1"], ["0", "1", "2"], [0.9, 1.0, 1.3], ["0", "1"])
    written: dict[str, object] = {}
    monkeypatch.setattr(recipe_pool, "write_results", lambda name, data, table: written.update(name=name, data=data))
    monkeypatch.setattr("sys.argv", ["recipe_pool.py", str(one), "--name", "pooled_test"])
    recipe_pool.main()
    out = capsys.readouterr().out
    assert "| **pooled** | | | | 3 | **1.000**" in out
    assert "| spare core | | | | 2 | **0.950**" in out
    assert written["name"] == "pooled_test"
    assert written["data"]["seeds_with_a_spare_core"] == ["/tmp/a/rp1/0", "/tmp/a/rp1/1"]  # type: ignore[index]


def test_a_pool_of_pools(recipe_pool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A results file of this script's own (seeds named in full, no roots) pools again with new runs."""
    first = _results(tmp_path / "first.json", ["/tmp/a/rp1"], ["0", "1"], [1.0, 1.2], ["0"])
    written: dict[str, object] = {}
    monkeypatch.setattr(recipe_pool, "write_results", lambda name, data, table: written.update(data))
    monkeypatch.setattr("sys.argv", ["recipe_pool.py", str(first), "--name", "pooled_test"])
    recipe_pool.main()
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps({**written, "environment": {"git_sha": "0123456789abcdef",
                                                           "date": "2026-11-30T16:00:00+00:00"}}))
    later = _results(tmp_path / "later.json", ["/tmp/b/rp2"], ["0"], [0.9], [])
    seeds, lines = recipe_pool.pooled([pool, first, later])  # first's seeds are in the pool already
    assert [key for _, key, _, _ in seeds] == ["/tmp/a/rp1/0", "/tmp/a/rp1/1", "/tmp/b/rp2/0"]
    assert [spare for _, _, _, spare in seeds] == [True, False, False]
    assert [line.split(" | ")[4] for line in lines] == ["2", "0", "1"]
