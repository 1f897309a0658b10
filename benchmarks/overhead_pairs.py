"""Two versions of the package in ONE process, fits alternating: did a change move ``asyncsam/overhead_ms``?

``overhead_trees.py`` runs each commit in a process of its own, minutes apart; on this project's
2-core VM the code's cost moves by tens of microseconds between minutes, more than most changes
to the trainer's hot path. Here an older commit's package is exported (``git archive``) and
renamed ``lightning_asyncsam_old``, both packages are imported into one process, and AsyncSAM fits
of the digits recipe (``overhead.fit``: b = b' = 32, trainer and worker at one thread each) alternate
between them, the order flipping every pair, so that each pair shares the machine's minute.

Per fit it takes ``asyncsam/overhead_ms`` as the strategy accounts it (the mean over epochs 2..N)
and :func:`overhead.robust_step_cost`, and per pair the difference, new minus old. It reports the
median and mean of the differences, a 95% bootstrap interval of the median, and in how many pairs
the new package cost less. Even within one process a single fit's cost spreads by tens of
microseconds (the VM's neighbours move the caches): use tens of pairs.

Why not alternate the two within one fit, step by step: that keeps both code paths cold, and it
overstated a saving threefold here (see benchmarks/README.md, the seventh round).

With ``--sgd``, each round also fits SGD (Lightning's own strategy), the three arms' order rotating,
and the table adds what the issue's targets name in the same minutes for both packages: each
fit's median step (batch start to batch start, epochs 2..N) against SGD's of the same round, as
added time per step and as a share of SGD's step. A commit from before the per-step totals existed
(the filing commit of issue 11, 1e2d65f) is compared on those figures alone.

Commands:
    python benchmarks/overhead_pairs.py --old a55fcd7                  # against this checkout, 40 pairs of 4 epochs
    python benchmarks/overhead_pairs.py --old a55fcd7 --pairs 60 --name overhead_pairs_round7
    python benchmarks/overhead_pairs.py --old 1e2d65f --sgd --pairs 20 --epochs 5   # before and after, beside SGD
"""

from __future__ import annotations

import argparse
import importlib
import math
import random
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import overhead  # noqa: E402
from _common import SHARED_CORE, CoreProbe, environment, environment_markdown, git_sha, write_results  # noqa: E402

OLD = "lightning_asyncsam_old"


def export_renamed(rev: str, into: Path) -> str:
    """``rev``'s package as ``lightning_asyncsam_old`` under ``into`` (committed code only); returns its SHA."""
    sha = subprocess.run(["git", "rev-parse", rev], cwd=HERE, check=True, capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", sha, "lightning_asyncsam"], cwd=HERE.parent, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "lightning_asyncsam").rename(into / OLD)
    name = re.compile(r"\blightning_asyncsam\b")
    for path in (into / OLD).rglob("*.py"):
        path.write_text(name.sub(OLD, path.read_text()))
    return sha


def bootstrap_median(values: list[float], draws: int = 4000, seed: int = 0) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of the median of ``values``.

    Example::

        >>> lo, hi = bootstrap_median([1.0, 2.0, 3.0, 4.0, 5.0])
        >>> 1.0 <= lo <= 3.0 <= hi <= 5.0
        True
    """
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choice(values) for _ in values) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def per_step(clock: overhead.EpochClock) -> float:
    """``asyncsam/overhead_ms`` per optimizer step over epochs 2..N, in microseconds."""
    return sum(clock.overhead_ms[1:]) / max(1, sum(clock.steps[1:])) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="the commit to compare against (its committed package)")
    parser.add_argument("--pairs", type=int, default=40, help="fits of each package, alternating")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fit (the first is not counted)")
    parser.add_argument("--ascent-batch-size", type=int, default=overhead.B)
    parser.add_argument("--sgd", action="store_true", help="fit SGD in every round too: steps against SGD's")
    parser.add_argument("--name", default=None, help="results/<name>.{json,md}; none: print only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp, CoreProbe() as cores:
        old_sha = export_renamed(args.old, Path(tmp))
        sys.path.insert(0, tmp)
        packages = {"old": importlib.import_module(OLD), "new": importlib.import_module("lightning_asyncsam")}
        packages["new"].strategies.registry.register_all()  # the old package's import took the names over
        arms = ["old", "new", "sgd"] if args.sgd else ["old", "new"]
        runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
        for pair in range(args.pairs):
            for arm in arms[pair % len(arms):] + arms[:pair % len(arms)]:  # each arm first in turn
                before = cores.probe()
                clock = overhead.fit("sgd" if arm == "sgd" else "asyncsam", args.epochs, pair, tmp,
                                     ascent_batch_size=args.ascent_batch_size, package=packages.get(arm))
                after = cores.probe()
                runs[arm].append({"overhead_us": per_step(clock), "robust_us": overhead.robust_step_cost(clock) * 1e3,
                                  "median_step_ms": overhead.steady_step(clock.step_s) * 1e3,
                                  "core_slowdown": [p["slowdown"] for p in (before, after) if p]})
                print(f"pair {pair:3d} {arm}  overhead {runs[arm][-1]['overhead_us']:6.1f} us  robust "
                      f"{runs[arm][-1]['robust_us']:6.1f} us  median step {runs[arm][-1]['median_step_ms']:.3f} ms",
                      flush=True)
    summary: dict[str, Any] = {"old_sha": old_sha, "new_sha": git_sha()}
    rows = []
    for key, label in (("overhead_us", "`asyncsam/overhead_ms` (mean)"), ("robust_us", "robust")):
        if not any(r[key] for r in runs["old"]):  # the old package kept no per-step totals: nothing to pair
            rows.append(f"| {label} | (not kept by {old_sha[:7]}) | {statistics.median(r[key] for r in runs['new']):.1f} us "
                        "| | | |")
            continue
        diffs = [n[key] - o[key] for n, o in zip(runs["new"], runs["old"])]
        lo, hi = bootstrap_median(diffs)
        summary[key] = {"old_median": statistics.median(r[key] for r in runs["old"]),
                        "new_median": statistics.median(r[key] for r in runs["new"]),
                        "paired_median": statistics.median(diffs), "paired_mean": statistics.mean(diffs),
                        "ci95_median": [lo, hi], "new_lower": sum(d < 0 for d in diffs), "pairs": len(diffs)}
        s = summary[key]
        rows.append(f"| {label} | {s['old_median']:.1f} us | {s['new_median']:.1f} us | {s['paired_median']:+.1f} us "
                    f"({lo:+.1f} to {hi:+.1f}) | {s['paired_mean']:+.1f} us | {s['new_lower']}/{s['pairs']} |")
    against_sgd = _against_sgd(runs, summary, old_sha) if args.sgd else []
    env = environment(probe_cores=False)
    table = "\n".join([
        f"AsyncSAM on the digits recipe (b = b' = {args.ascent_batch_size}), trainer and worker at 1 thread each: "
        f"{args.pairs} pairs of {args.epochs}-epoch fits, old ({old_sha[:7]}, renamed) and new alternating in one "
        "process. Per step over epochs 2..N; paired: new minus old, with a 95% bootstrap interval of the median.",
        "",
        "| per step | old (median of fits) | new | paired median (95% CI) | paired mean | new lower in |",
        "|---|---|---|---|---|---|",
        *rows,
        *against_sgd,
        "",
        environment_markdown(env),
    ])
    print(table)
    if args.name:
        write_results(args.name, {"config": vars(args), "environment": env, "summary": summary, "runs": runs}, table)


def _against_sgd(runs: dict[str, list[dict[str, float]]], summary: dict[str, Any], old_sha: str) -> list[str]:
    """Each package's median step against SGD's of the same round: the table's second part (``--sgd``)."""
    rounds = range(len(runs["sgd"]))
    probes = [x for arm in runs for r in runs[arm] for x in r["core_slowdown"]]
    # The rounds whose every fit met a spare second core (SHARED_CORE, before and after each).
    spare = [i for i in rounds if all(max(runs[arm][i]["core_slowdown"] or [math.inf]) < SHARED_CORE
                                      for arm in runs)]
    summary["rounds_with_a_spare_core"] = spare
    rows = [
        "",
        "Each fit's median step (batch start to batch start, epochs 2..N) against SGD's in the same round: "
        "median over rounds, paired differences with a 95% bootstrap interval of their median. The second core "
        f"(`_common.CoreProbe`, before and after every fit): a compute-bound neighbour slowed the first "
        f"{min(probes, default=math.nan):.2f}-{max(probes, default=math.nan):.2f}x (1.00x: spare); {len(spare)} of "
        f"{len(rounds)} rounds met a spare core (< {SHARED_CORE}x) around every fit.",
        "",
        "| arm | rounds | median step | added per step vs SGD (95% CI) | share of SGD's step |",
        "|---|---|---|---|---|",
    ]
    subsets = [("all", list(rounds))] + ([("spare core", spare)] if spare and len(spare) < len(rounds) else [])
    for which, chosen in subsets:
        sgd = [runs["sgd"][i]["median_step_ms"] for i in chosen]
        rows.append(f"| SGD | {which} ({len(chosen)}) | {statistics.median(sgd):.3f} ms | | |")
        for arm, label in (("old", f"old ({old_sha[:7]})"), ("new", "new")):
            steps = [runs[arm][i]["median_step_ms"] for i in chosen]
            added = [(a - s) * 1e3 for a, s in zip(steps, sgd)]
            shares = [a / s - 1 for a, s in zip(steps, sgd)]
            lo, hi = bootstrap_median(added)
            summary[f"{arm}_vs_sgd" + ("" if which == "all" else "_spare_core")] = {
                "median_step_ms": statistics.median(steps), "added_us": statistics.median(added),
                "ci95_added_us": [lo, hi], "share": statistics.median(shares)}
            rows.append(f"| {label} | {which} ({len(chosen)}) | {statistics.median(steps):.3f} ms | "
                        f"{statistics.median(added):+.0f} us ({lo:+.0f} to {hi:+.0f}) | {statistics.median(shares):+.1%} |")
    return rows


if __name__ == "__main__":
    main()
