"""Pool ``overhead.py`` runs: the trainer's added cost per step against SGD's step, across sessions.

``asyncsam/overhead_ms`` follows the VM's speed: one commit's figure moved from 0.09 to 0.14 ms
within two hours, with SGD's median step from 3.5 to 4.9 ms, while its share of that step stayed
put. This reads the results files of ``overhead.py`` runs (each file one run; a run given twice
counts once), one row each, and reports for the b' = b arm the median cost per step and robust
estimate, the median share of SGD's median step with a 95% bootstrap interval, the runs at or under
a threshold, and the least-squares line through the origin, cost = share x SGD's step, with the SGD
step at which that line reaches the threshold.

Commands:
    python benchmarks/overhead_pool.py benchmarks/results/overhead_digits_cpu_round14_be15fb4.json \
        benchmarks/results/overhead_digits_cpu_round1[56]_run*.json --name overhead_digits_cpu_pooled_round16
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

try:
    from benchmarks._common import environment, environment_markdown, write_results
    from benchmarks.recipe_pairs import _median_ci
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import environment, environment_markdown, write_results
    from recipe_pairs import _median_ci

ARM = "asyncsam_b32"  # overhead.py's b' = b arm, the issue's


def runs(files: list[Path], arm: str = ARM) -> list[dict[str, Any]]:
    """One record per distinct run of ``files`` (a run is its commit and start time), in the files' order."""
    seen: set[tuple[str, str]] = set()
    records = []
    for path in files:
        data = json.loads(path.read_text())
        env, summary = data["environment"], data["summary"]
        key = (env["git_sha"], env["date"])
        if key in seen:
            continue
        seen.add(key)
        step = summary["sgd_median_step_ms"]
        cost = summary[arm]["overhead_metric_ms_per_step"]
        records.append({"file": path.stem, "commit": env["git_sha"][:7], "date": env["date"][:16],
                        "sgd_step_ms": step, "overhead_ms": cost,
                        "robust_ms": summary[arm]["overhead_metric_ms_robust"], "share": cost / step})
    return records


def through_origin(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ``ys`` on ``xs`` through the origin."""
    return sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="overhead.py results (results/<name>.json)")
    parser.add_argument("--threshold-ms", type=float, default=0.1, help="the target per step (issue 11: 0.1 ms)")
    parser.add_argument("--name", default=None, help="results/<name>.{json,md}; none: print only")
    args = parser.parse_args()
    records = runs(args.files)
    if not records:
        parser.error("no run in the files given")
    costs = [r["overhead_ms"] for r in records]
    shares = [100 * r["share"] for r in records]
    slope = through_origin([r["sgd_step_ms"] for r in records], costs)
    under = sum(c <= args.threshold_ms for c in costs)
    env = environment(probe_cores=False)
    table = "\n".join([
        "`overhead.py` runs pooled, b' = b: `asyncsam/overhead_ms` per step (mean; robust: each kind of step's "
        "median, weighted), and its share of SGD's median step in the same run.",
        "",
        "| file | commit | date (UTC) | SGD's median step | `overhead_ms` | robust | share |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['file']} | {r['commit']} | {r['date']} | {r['sgd_step_ms']:.2f} ms | {r['overhead_ms']:.3f} ms | "
          f"{r['robust_ms']:.3f} ms | {100 * r['share']:.2f}% |" for r in records),
        f"| **median of {len(records)} runs** | | | {statistics.median(r['sgd_step_ms'] for r in records):.2f} ms | "
        f"**{statistics.median(costs):.3f} ms** | {statistics.median(r['robust_ms'] for r in records):.3f} ms | "
        f"**{statistics.median(shares):.2f}%** ({_median_ci(shares)}) |",
        "",
        f"Runs at or under {args.threshold_ms} ms: {under} of {len(records)}. Least squares through the origin: "
        f"`overhead_ms` = {100 * slope:.2f}% of SGD's median step, which reaches {args.threshold_ms} ms where "
        f"SGD's step takes {args.threshold_ms / slope:.2f} ms.",
        "",
        environment_markdown(env),
    ])
    print(table)
    if args.name:
        write_results(args.name, {"config": {"files": [str(f) for f in args.files], "threshold_ms": args.threshold_ms},
                                  "environment": env, "runs": records, "median_overhead_ms": statistics.median(costs),
                                  "median_share": statistics.median(r["share"] for r in records), "slope": slope,
                                  "sgd_step_at_threshold_ms": args.threshold_ms / slope, "runs_under": under}, table)


if __name__ == "__main__":
    main()
