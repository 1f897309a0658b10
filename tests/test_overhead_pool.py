"""``benchmarks/overhead_pool.py``: overhead.py runs pooled, the cost per step against SGD's step."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture
def overhead_pool() -> ModuleType:
    """The script, loaded by path."""
    return load_benchmark("overhead_pool")


def _results(path: Path, date: str, sgd_step_ms: float, overhead_ms: float) -> Path:
    """A results file in the layout overhead.py writes (the fields the pool reads)."""
    arm = {"overhead_metric_ms_per_step": overhead_ms, "overhead_metric_ms_robust": overhead_ms - 0.01}
    data = {"environment": {"git_sha": "0123456789abcdef", "date": date},
            "summary": {"sgd_median_step_ms": sgd_step_ms, "asyncsam_b32": arm, "asyncsam_b1": arm}}
    path.write_text(json.dumps(data))
    return path


def test_a_run_given_twice_counts_once(overhead_pool: ModuleType, tmp_path: Path) -> None:
    a = _results(tmp_path / "a.json", "2026-11-30T16:00:00+00:00", 4.0, 0.12)
    b = _results(tmp_path / "b.json", "2026-11-30T16:10:00+00:00", 3.0, 0.06)
    copy = _results(tmp_path / "copy.json", "2026-11-30T16:00:00+00:00", 4.0, 0.12)  # a, renamed
    records = overhead_pool.runs([a, b, copy])
    assert [r["file"] for r in records] == ["a", "b"]
    assert [r["share"] for r in records] == pytest.approx([0.03, 0.02])


def test_the_line_through_the_origin_and_the_table(overhead_pool: ModuleType, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    files = [_results(tmp_path / f"{i}.json", f"2026-11-30T16:0{i}:00+00:00", step, cost)
             for i, (step, cost) in enumerate([(4.0, 0.12), (3.0, 0.06), (5.0, 0.15)])]
    # sum(x y) / sum(x^2) = 1.41 / 50, not the mean of the shares (0.0267)
    assert overhead_pool.through_origin([4.0, 3.0, 5.0], [0.12, 0.06, 0.15]) == pytest.approx(0.0282)
    written: dict[str, object] = {}
    monkeypatch.setattr(overhead_pool, "write_results", lambda name, data, table: written.update(data))
    monkeypatch.setattr("sys.argv", ["overhead_pool.py", *map(str, files), "--name", "pooled_test"])
    overhead_pool.main()
    out = capsys.readouterr().out
    assert "| **median of 3 runs** | | | 4.00 ms | **0.120 ms** | 0.110 ms | **3.00%**" in out
    assert "Runs at or under 0.1 ms: 1 of 3." in out
    assert "= 2.82% of SGD's median step, which reaches 0.1 ms where SGD's step takes 3.55 ms" in out
    assert written["sgd_step_at_threshold_ms"] == pytest.approx(0.1 / 0.0282)
    assert written["runs_under"] == 1
