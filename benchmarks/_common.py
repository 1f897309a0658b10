"""What every benchmark shares: the strategies of the ``algorithm=`` configs, and the machine, the
versions and the git SHA recorded beside the numbers."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
#: The ``algorithm=`` configs of asyncsam-train: the benchmarks train with exactly their values (Table A.2).
ALGORITHM_DIR = HERE.parent / "conf" / "algorithm"


def algorithm_names() -> list[str]:
    """The names of the ``algorithm=`` configs (sgd, sam, asam, gsam, ...)."""
    return sorted(p.stem for p in ALGORITHM_DIR.glob("*.yaml"))


def algorithm_strategy(name: str, **overrides: Any) -> Any:
    """The Trainer ``strategy`` of ``conf/algorithm/<name>.yaml``, with ``overrides`` on its arguments.

    ``"auto"`` for SGD. ``rho`` in ``overrides`` sets ``algorithm.rho``, as on the command line.

    Raises:
        ValueError: ``name`` is not a config, or an override names no argument of that config.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = ALGORITHM_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"algorithm={name!r} is not one of {algorithm_names()}")
    cfg = OmegaConf.create({"algorithm": OmegaConf.load(path)})
    strategy = cfg.algorithm.strategy
    if isinstance(strategy, str):
        if overrides:
            raise ValueError(f"algorithm={name!r} takes no arguments, got {sorted(overrides)}")
        return strategy
    unknown = sorted(set(overrides) - set(strategy))
    if unknown:
        known = sorted(set(strategy) - {"_target_"})
        raise ValueError(f"algorithm={name!r} has no argument(s) {unknown}; it has {known}")
    for key, value in overrides.items():
        if key == "rho" and cfg.algorithm.get("rho") is not None:
            cfg.algorithm.rho = value
        else:
            strategy[key] = value
    return instantiate(strategy)


def git_sha() -> str | None:
    """The checkout's commit; ``$GIT_SHA`` overrides it where the tree travelled without its history."""
    if os.environ.get("GIT_SHA"):
        return os.environ["GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except OSError:
        pass
    return None


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"model name\s*:\s*(.+)", text)
        return match.group(1).strip() if match else platform.processor()
    except OSError:
        return platform.processor()


def environment() -> dict[str, Any]:
    import lightning

    import lightning_asyncsam

    env: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "lightning_asyncsam": lightning_asyncsam.__version__,
        "git_sha": git_sha(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return env


def environment_markdown(env: dict[str, Any]) -> str:
    gpu = f", GPU {env['cuda']}" if env.get("cuda") else ""
    return (f"Machine: {env['cpu']} ({env['cores']} cores){gpu}; Python {env['python']}, torch {env['torch']}, "
            f"lightning {env['lightning']}, lightning_asyncsam {env['lightning_asyncsam']} at {env['git_sha']}; "
            f"{env['date']}.")


def write_results(name: str, payload: dict[str, Any], table_md: str) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md``, and refresh the table in README.md."""
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    _write_atomically(out / f"{name}.json", json.dumps(payload, indent=2, default=str) + "\n")
    _write_atomically(out / f"{name}.md", table_md + "\n")
    readme = HERE / "README.md"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if readme.exists():
        text = readme.read_text()
        if start in text and end in text:
            head, rest = text.split(start, 1)
            _, tail = rest.split(end, 1)
            _write_atomically(readme, f"{head}{start}\n{table_md}\n{end}{tail}")
    return out / f"{name}.json"


def _write_atomically(path: Path, text: str) -> None:
    """A reader, or a crash, sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
