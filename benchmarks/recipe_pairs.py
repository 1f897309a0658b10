"""A recipe's epoch time, AsyncSAM against SGD, paired by seed: the figure issue 11's first target names.

``asyncsam-report`` gives each algorithm's mean epoch time over seeds; on a VM whose speed drifts
between minutes, a ratio of means compares the minutes as much as the algorithms. Run the two
algorithms seed by seed, alternating which goes first, then pair them here: for each seed, the
ratio of the steady-state epochs (median of epochs 2..N, validation included, as ``time/epoch_s``
logs it) and of the training time alone (``time/train_images_per_s``, validation excluded).

Commands (the digits recipe with b' = b = 32; 6 seeds, ~2 min):
    for s in 0 1 2 3 4 5; do
      asyncsam-train -m algorithm=sgd seed=$s hydra.sweep.dir=runs/sgd$s
      asyncsam-train -m algorithm=asyncsam algorithm.strategy.ascent_batch_size=32 seed=$s hydra.sweep.dir=runs/async$s
    done      # (alternate the order on odd seeds)
    python benchmarks/recipe_pairs.py runs --name digits_recipe_bb

Or let it run them, with the second core probed before and after every run (``_common.CoreProbe``;
the seeds whose two runs all met a spare core are summarized apart):
    python benchmarks/recipe_pairs.py runs/pairs --run 8 --name digits_recipe_bb

``--control-batch-size 1`` adds a third run per seed (the order rotating over the three): AsyncSAM
with b' = 1, whose worker barely computes. It splits AsyncSAM's excess over SGD in two, in the same
minutes: ``b' = 1 x SGD`` is what the trainer's thread pays (the strategy's own work, as at any b'),
``b' = b x b' = 1`` what the worker's computing beside it costs (on a VM whose two vCPUs share a
host core's units or caches, each millisecond of the worker's ascent slows the trainer's too):
    python benchmarks/recipe_pairs.py runs/triples --run 10 --control-batch-size 1 --name digits_recipe_split

``--control-memory-format preserve`` makes the third run AsyncSAM at the same b' with the replica in
the module's own layout (``ascent_memory_format``; the default "auto" puts a CPU replica's
convolution weights in channels_last): the same minutes for the layout's effect on the trainer:
    python benchmarks/recipe_pairs.py runs/layout --run 10 --control-memory-format preserve --name digits_recipe_layout

``--memory-format auto`` reads only the AsyncSAM runs that recorded that layout, to pool the main
arms of such runs with plain pairs:
    python benchmarks/recipe_pairs.py runs/layout runs/pairs --memory-format auto --name digits_recipe_pooled
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

try:
    from benchmarks._common import SHARED_CORE, CoreProbe, environment, environment_markdown, write_results
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import SHARED_CORE, CoreProbe, environment, environment_markdown, write_results

PROBE_FILE = "core_probe.json"  # beside a run's sweep directory: the second core before and after the run


def run_times(run_dir: Path) -> tuple[float, float] | None:
    """(steady epoch s, steady training images/s) of one ``asyncsam-train`` run, from its metrics.csv."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    with path.open() as f:
        rows = list(csv.DictReader(f))
    epochs = [float(r["time/epoch_s"]) for r in rows if r.get("time/epoch_s")]
    speed = [float(r["time/train_images_per_s"]) for r in rows if r.get("time/train_images_per_s")]
    if len(epochs) < 2 or len(speed) < 2:
        return None
    return statistics.median(epochs[1:]), statistics.median(speed[1:])


def run_pairs(root: Path, seeds: int, algorithm: str, against: str, ascent_batch_size: int,
              control: int | None = None, control_format: str | None = None) -> None:
    """``asyncsam-train`` on the default recipe, both algorithms seed by seed (the order alternating), under ``root``.

    With ``control``, a third run per seed: ``algorithm`` with b' = ``control`` (the order rotating
    over the three); with ``control_format``, the third run is ``algorithm`` at ``ascent_batch_size``
    with that ``ascent_memory_format``. The second core is probed before and after every run; the
    readings go to the run's :data:`PROBE_FILE`.
    """
    arms: list[tuple[str, int | None, str | None]] = [(against, None, None), (algorithm, ascent_batch_size, None)]
    if control is not None:
        arms.append((algorithm, control, None))
    if control_format is not None:
        arms.append((algorithm, ascent_batch_size, control_format))
    with CoreProbe() as cores:
        for seed in range(seeds):
            turn = seed % len(arms)
            order = arms[turn:] + arms[:turn] if len(arms) > 2 else arms[::1 if seed % 2 == 0 else -1]
            for name, size, layout in order:
                if layout is not None:
                    sweep = root / f"{name}_{layout}_{seed}"
                elif size is None or size == ascent_batch_size:
                    sweep = root / f"{name}{seed}"
                else:
                    sweep = root / f"{name}_b{size}_{seed}"
                shutil.rmtree(sweep, ignore_errors=True)
                command = ["asyncsam-train", "-m", f"algorithm={name}", f"seed={seed}", f"hydra.sweep.dir={sweep}"]
                if name == "asyncsam":
                    command.append(f"algorithm.strategy.ascent_batch_size={size}")
                if layout is not None:
                    command.append(f"algorithm.strategy.ascent_memory_format={layout}")
                before = cores.probe()
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                after = cores.probe()
                (sweep / PROBE_FILE).write_text(json.dumps([p["slowdown"] for p in (before, after) if p]) + "\n")
                arm = name + ("" if size is None else f" b={size}") + ("" if layout is None else f" {layout}")
                print(f"seed {seed} {arm}: done", flush=True)


def _probes(run_dir: Path, root: Path) -> list[float]:
    """The second core's readings around a run (see :func:`run_pairs`); [] where none were taken."""
    for folder in (run_dir, *run_dir.parents):
        if (folder / PROBE_FILE).is_file():
            return json.loads((folder / PROBE_FILE).read_text())
        if folder == root:
            break
    return []


def _arm(info: dict[str, Any], algorithm: str, against: str, size: int, control: int | None,
         control_format: str | None = None, memory_format: str | None = None) -> str | None:
    """Which arm a run's ``summary.json`` belongs to: "against", "algorithm" (b' = ``size``), "control", or None.

    With ``control_format``, the control arm is b' = ``size`` with that ``ascent_memory_format``
    (a run from before the summary recorded it counts as the main arm). With ``memory_format``, the
    main arm takes only the runs that recorded that ``ascent_memory_format``.
    """
    name = info.get("algorithm")
    if name == against:
        return "against"
    if name != algorithm:
        return None
    if control is not None and info.get("ascent_batch_size") == control:
        return "control"
    if info.get("ascent_batch_size") != size:
        return None
    if control_format is not None and info.get("ascent_memory_format") == control_format:
        return "control"
    if memory_format is not None and info.get("ascent_memory_format") != memory_format:
        return None
    return "algorithm"


def _median_ci(values: list[float], resamples: int = 2000) -> str:
    """A 95% bootstrap interval of the median, "lo-hi" (a fixed generator: the same runs give the same interval)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return f"{medians[int(0.025 * resamples)]:.3f}-{medians[int(0.975 * resamples) - 1]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path,
                        help="directories holding asyncsam-train runs; several are pooled, a seed of each paired apart")
    parser.add_argument("--algorithm", default="asyncsam")
    parser.add_argument("--against", default="sgd")
    parser.add_argument("--run", type=int, default=0, metavar="SEEDS",
                        help="first run this many seeds of both algorithms under the (single) root, probing the cores")
    parser.add_argument("--ascent-batch-size", type=int, default=32,
                        help="b' of the AsyncSAM runs that --run makes, and of those read (others are left out)")
    parser.add_argument("--control-batch-size", type=int, default=None, metavar="B1",
                        help="a third arm: the algorithm with b' = B1 (see the module's docstring); its runs are "
                             "told apart by their b'")
    parser.add_argument("--control-memory-format", choices=("preserve", "channels_last"), default=None,
                        help="a third arm: the algorithm at --ascent-batch-size with this ascent_memory_format (the "
                             "main arm keeps the recipe's, 'auto'); its runs are told apart by their summary")
    parser.add_argument("--memory-format", choices=("auto", "preserve", "channels_last"), default=None,
                        help="read only the algorithm's runs that recorded this ascent_memory_format (to pool the "
                             "main arms of --control-memory-format runs with plain pairs); default: any")
    parser.add_argument("--name", default=None, help="results/<name>.{json,md}; none: print only")
    args = parser.parse_args()
    if args.control_batch_size is not None and args.control_memory_format is not None:
        parser.error("--control-batch-size and --control-memory-format are two third arms: give one")
    if args.run:
        if len(args.roots) != 1:
            parser.error("--run takes one root")
        if args.control_batch_size == args.ascent_batch_size:
            parser.error("--control-batch-size must differ from --ascent-batch-size")
        run_pairs(args.roots[0], args.run, args.algorithm, args.against, args.ascent_batch_size,
                  args.control_batch_size, args.control_memory_format)
    # Keyed by (arm, seed): a seed of each root, where several roots are pooled ("root/seed").
    times: dict[tuple[str, str], tuple[float, float]] = {}
    probes: dict[tuple[str, str], list[float]] = {}
    recipe = None
    for root in args.roots:
        for summary in sorted(root.rglob("summary.json")):
            info = json.loads(summary.read_text())
            got = run_times(summary.parent)
            arm = _arm(info, args.algorithm, args.against, args.ascent_batch_size, args.control_batch_size,
                       args.control_memory_format, args.memory_format)
            seed = str(info["seed"]) if len(args.roots) == 1 else f"{root.name}/{info['seed']}"
            if got is not None and arm is not None:
                times[(arm, seed)] = got
                probes[(arm, seed)] = _probes(summary.parent, root)
                recipe = info.get("recipe", recipe)
    controlled = args.control_batch_size is not None or args.control_memory_format is not None
    arms = ["algorithm", "against"] + (["control"] if controlled else [])
    # The third arm's name in the table: its b', or its layout.
    label = (f"b' = {args.control_batch_size}" if args.control_batch_size is not None
             else str(args.control_memory_format))
    seeds = sorted((s for a, s in times if a == "algorithm" and all((b, s) in times for b in arms)),
                   key=lambda s: (s.rpartition("/")[0], int(s.rpartition("/")[2])))
    if not seeds:
        control = f", {label}" if controlled else ""
        parser.error(f"no seed has runs of every arm ({args.algorithm!r}, {args.against!r}{control}) "
                     f"under {args.roots}")
    rows, epoch_ratios, train_ratios = [], [], []
    control_ratios: list[float] = []  # the control arm's epoch x against's
    compute_ratios: list[float] = []  # the algorithm's epoch x the control arm's: the worker's computing
    spare: list[str] = []  # the seeds whose runs all met a spare second core before and after
    for s in seeds:
        (a_epoch, a_speed), (b_epoch, b_speed) = times[("algorithm", s)], times[("against", s)]
        epoch_ratios.append(a_epoch / b_epoch)
        train_ratios.append(b_speed / a_speed)  # the same images an epoch: the ratio of training times
        readings = [r for arm in arms for r in probes[(arm, s)]]
        if readings and max(readings) < SHARED_CORE:
            spare.append(s)
        core = f"{max(readings):.2f}x" if readings else ""
        control = ""
        if "control" in arms:
            c_epoch = times[("control", s)][0]
            control_ratios.append(c_epoch / b_epoch)
            compute_ratios.append(a_epoch / c_epoch)
            control = f" {c_epoch * 1e3:.1f} ms | {control_ratios[-1]:.3f} | {compute_ratios[-1]:.3f} |"
        rows.append(f"| {s} | {b_epoch * 1e3:.1f} ms | {a_epoch * 1e3:.1f} ms | {epoch_ratios[-1]:.3f} | "
                    f"{b_speed:.0f} | {a_speed:.0f} | {train_ratios[-1]:.3f} | {core} |{control}")
    split = "control" in arms
    spare_rows = []
    if spare and len(spare) < len(seeds):
        pick = [i for i, s in enumerate(seeds) if s in spare]
        spare_rows = [f"| median, spare core ({len(spare)} seeds) | | | "
                      f"**{statistics.median(epoch_ratios[i] for i in pick):.3f}** | | | "
                      f"**{statistics.median(train_ratios[i] for i in pick):.3f}** | |" + (
                          f" | **{statistics.median(control_ratios[i] for i in pick):.3f}** | "
                          f"**{statistics.median(compute_ratios[i] for i in pick):.3f}** |" if split else "")]
    if not split:
        split_text = ""
    elif args.control_batch_size is not None:
        split_text = (f" A third arm per seed, {args.algorithm} with {label} (the order rotating over the three): its "
                      f"x {args.against} is what the trainer's thread pays at any b'; {args.algorithm} x it, what the "
                      "worker's computing beside the trainer costs.")
    else:
        split_text = (f" A third arm per seed, {args.algorithm} at the same b' with ascent_memory_format={label} (the "
                      f"order rotating over the three): {args.algorithm} x it is what the replica's layout changes.")
    env = environment(probe_cores=False)
    table = "\n".join([
        f"Recipe {recipe}: {args.algorithm} against {args.against}, paired by seed. Steady-state epoch: median of "
        "epochs 2..N, validation included (`time/epoch_s`); training only: the median training images/s of epochs 2..N "
        "(validation excluded), its x the ratio of training times. Second core: the largest slowdown that a "
        "compute-bound neighbour on it caused the first, probed before and after each of the seed's runs "
        f"(`_common.CoreProbe`; 1.00x: a spare core; from {SHARED_CORE}x on, shared).{split_text}",
        "",
        f"| seed | {args.against} epoch | {args.algorithm} epoch | x | {args.against} training images/s | "
        f"{args.algorithm} training images/s | x (training time) | second core |"
        + (f" {label} epoch | {label} x {args.against} | x {label} |" if split else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if split else ""),
        *rows,
        f"| median (95% CI) | | | **{statistics.median(epoch_ratios):.3f}** ({_median_ci(epoch_ratios)}) | | | "
        f"**{statistics.median(train_ratios):.3f}** | |"
        + (f" | **{statistics.median(control_ratios):.3f}** | **{statistics.median(compute_ratios):.3f}** |"
           if split else ""),
        *spare_rows,
        "",
        environment_markdown(env),
    ])
    print(table)
    if args.name:
        write_results(args.name, {"config": {k: str(v) for k, v in vars(args).items()}, "environment": env,
                                  "seeds": seeds, "epoch_ratio": epoch_ratios, "train_ratio": train_ratios,
                                  "control_epoch_ratio": control_ratios, "epoch_ratio_over_control": compute_ratios,
                                  "core_slowdown": {f"{a}{s}": v for (a, s), v in probes.items()},
                                  "seeds_with_a_spare_core": spare}, table)


if __name__ == "__main__":
    main()
