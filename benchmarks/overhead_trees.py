"""``overhead.py`` on several commits of the package, interleaved in time: before and after, side by side.

On a shared 2-core VM the machine's speed drifts by 20% or more between minutes, so two
``overhead.py`` runs made one after the other compare the minutes as much as the code. This
script exports each commit's package with ``git archive`` (committed code only), then runs one
repetition of ``overhead.py`` (SGD, b' = 32 and b' = 1, interleaved in one process) per commit per
round, rotating the order every round, and reports per commit the medians over rounds of the
paired ratio to SGD, the added wall and CPU time per step, and ``asyncsam/overhead_ms``.

Commands:
    python benchmarks/overhead_trees.py --tree before=7ea48cb --tree previous=a89299e --tree now=HEAD
    python benchmarks/overhead_trees.py --tree now=HEAD --rounds 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import environment, environment_markdown, write_results  # noqa: E402

ARMS = ("asyncsam_b32", "asyncsam_b1")


def export(rev: str, into: Path) -> str:
    """``git archive`` of ``rev`` into ``into``; returns its full SHA."""
    sha = subprocess.run(["git", "rev-parse", rev], cwd=HERE, check=True, capture_output=True, text=True).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", sha], cwd=HERE, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return sha


def one_round(tree: Path, sha: str, epochs: int, out: Path) -> dict[str, Any]:
    """One repetition of overhead.py against the package in ``tree``; its JSON."""
    env = {**os.environ, "PYTHONPATH": str(tree), "GIT_SHA": sha}
    subprocess.run([sys.executable, str(HERE / "overhead.py"), "--repeats", "1", "--epochs", str(epochs),
                    "--name", str(out)], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.with_suffix(".json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=REV",
                        help="a commit to measure, named (repeat the option)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--name", default="overhead_digits_cpu_trees")
    args = parser.parse_args()
    trees = [t.split("=", 1) for t in args.tree]
    if any(len(t) != 2 or not t[0] or not t[1] for t in trees) or args.rounds < 1 or args.epochs < 2:
        parser.error("--tree takes NAME=REV; --rounds >= 1; --epochs >= 2")
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory() as tmp:
        shas = {name: export(rev, Path(tmp) / name) for name, rev in trees}
        for r in range(args.rounds):
            order = trees[r % len(trees):] + trees[:r % len(trees)]
            for name, _ in order:
                result = one_round(Path(tmp) / name, shas[name], args.epochs, Path(tmp) / f"{name}_{r}")
                rows[name].append(result["summary"])
                b32 = result["summary"]["asyncsam_b32"]
                print(f"round {r} {name:10s} b'=32 x SGD {b32['ratio_paired']:.3f}, "
                      f"overhead_ms {b32['overhead_metric_ms_per_step']:.3f}", flush=True)

    summary: dict[str, Any] = {}
    lines = []
    for name, _ in trees:
        summary[name] = {"sha": shas[name], "sgd_epoch_s": statistics.median(s["sgd_epoch_s"] for s in rows[name])}
        for arm in ARMS:
            values = {key: [s[arm][key] for s in rows[name]] for key in
                      ("ratio_paired", "added_ms_per_step", "added_cpu_ms_per_step", "overhead_metric_ms_per_step",
                       "wait_ms_per_step")}
            summary[name][arm] = {key: statistics.median(v) for key, v in values.items()}
            summary[name][arm]["ratio_paired_range"] = [min(values["ratio_paired"]), max(values["ratio_paired"])]
            a = summary[name][arm]
            lines.append(f"| {name} ({shas[name][:7]}) | {arm.removeprefix('asyncsam_b')} | "
                         f"{summary[name]['sgd_epoch_s'] * 1e3:.1f} ms | {a['ratio_paired']:.3f} "
                         f"({a['ratio_paired_range'][0]:.2f}-{a['ratio_paired_range'][1]:.2f}) | "
                         f"{a['added_ms_per_step']:.3f} ms | {a['added_cpu_ms_per_step']:.3f} ms | "
                         f"{a['wait_ms_per_step']:.3f} ms | {a['overhead_metric_ms_per_step']:.3f} ms |")
    env = environment()
    table = "\n".join([
        f"Digits recipe (digits_cnn, b = 32), trainer and worker at 1 thread each. {args.rounds} rounds; in each, "
        f"one overhead.py repetition ({args.epochs} epochs each of SGD, b' = 32, b' = 1, interleaved) per commit, the "
        "commits' order rotating. Medians over rounds; x SGD is each repetition's ratio to its own SGD fit "
        "(range over rounds).",
        "",
        "| package | b' | SGD epoch | x SGD, paired | added wall per step | added trainer CPU per step | waiting per step "
        "| `asyncsam/overhead_ms` |",
        "|---|---|---|---|---|---|---|---|",
        *lines,
        "",
        environment_markdown(env),
    ])
    print(table)
    write_results(args.name, {"config": vars(args), "environment": env, "summary": summary, "rounds": rows}, table)


if __name__ == "__main__":
    main()
