"""Pool the per-seed ratios of earlier ``recipe_pairs.py`` results, where their run directories are gone.

``recipe_pairs.py`` pools run directories; a session's directories do not outlive it, but each of its
results files (``results/<name>.json``) keeps every seed's ratio and whether the seed met a spare
second core. This reads those files, drops a seed that two files hold (a pooled file repeats its
sources: the first file that names a seed of a root wins), and reports each file's median, the pooled
median with its 95% bootstrap interval, and the same over the seeds that met a spare core.

Commands:
    python benchmarks/recipe_pool.py benchmarks/results/digits_recipe_bb_pooled_round14.json \
        benchmarks/results/digits_recipe_bb_round15*.json --name digits_recipe_bb_pooled_round15
    python benchmarks/recipe_pool.py benchmarks/results/digits_recipe_bb_pooled_round15.json \
        benchmarks/results/digits_recipe_bb_round16*.json --name digits_recipe_bb_pooled_round16   # a pool pooled again
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

try:
    from benchmarks._common import environment, environment_markdown, write_results
    from benchmarks.recipe_pairs import _median_ci
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import environment, environment_markdown, write_results
    from recipe_pairs import _median_ci


def pooled(files: list[Path]) -> tuple[list[tuple[str, str, float, bool]], list[str]]:
    """((file, seed, epoch ratio, spare core) for each distinct seed, one line per file) of ``files``.

    A seed is named by its root directory and number ("/tmp/s15/rp1/3"), which a pooled file of
    recipe_pairs.py gives as the root's last name ("rp1/3") and one of this script's in full: a seed
    already taken is skipped.
    """
    seen: set[str] = set()
    seeds: list[tuple[str, str, float, bool]] = []
    lines: list[str] = []
    for path in files:
        data = json.loads(path.read_text())
        config = data["config"]
        # A file of this script's own names its seeds in full already; recipe_pairs.py's, by its roots.
        roots = [r.split("'")[1] for r in config["roots"].split("PosixPath(")[1:]] if "roots" in config else None
        spare = set(data["seeds_with_a_spare_core"])
        taken = 0
        for seed, ratio in zip(data["seeds"], data["epoch_ratio"]):
            if roots is None:
                key = seed
            elif len(roots) == 1:
                key = f"{roots[0]}/{seed}"
            else:
                name, _, number = seed.rpartition("/")
                key = f"{next((r for r in roots if Path(r).name == name), name)}/{number}"
            if key in seen:
                continue
            seen.add(key)
            seeds.append((path.stem, key, ratio, seed in spare))
            taken += 1
        env = data["environment"]
        lines.append(f"| {path.stem} | {env['git_sha'][:7]} | {env['date'][:16]} | {len(data['seeds'])} | {taken} | "
                     f"{statistics.median(data['epoch_ratio']):.3f} |")
    return seeds, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="recipe_pairs.py results (results/<name>.json)")
    parser.add_argument("--name", default=None, help="results/<name>.{json,md}; none: print only")
    args = parser.parse_args()
    seeds, lines = pooled(args.files)
    ratios = [r for _, _, r, _ in seeds]
    spare = [r for _, _, r, s in seeds if s]
    env = environment(probe_cores=False)
    table = "\n".join([
        "The recipe's steady-state epoch, AsyncSAM against SGD paired by seed (`recipe_pairs.py`), pooled over "
        "results files; a seed held by two files counts once. Spare core: the seeds whose runs all met a spare "
        "second core before and after.",
        "",
        "| file | commit | date (UTC) | seeds | taken | median x SGD |",
        "|---|---|---|---|---|---|",
        *lines,
        f"| **pooled** | | | | {len(ratios)} | **{statistics.median(ratios):.3f}** ({_median_ci(ratios)}) |",
        *([f"| spare core | | | | {len(spare)} | **{statistics.median(spare):.3f}** ({_median_ci(spare)}) |"]
          if spare else []),
        "",
        environment_markdown(env),
    ])
    print(table)
    if args.name:
        write_results(args.name, {"config": {"files": [str(f) for f in args.files]}, "environment": env,
                                  "seeds": [k for _, k, _, _ in seeds], "epoch_ratio": ratios,
                                  "source": [f for f, _, _, _ in seeds],
                                  "seeds_with_a_spare_core": [k for _, k, _, s in seeds if s]}, table)


if __name__ == "__main__":
    main()
