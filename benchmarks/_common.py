"""What every benchmark shares: the strategies of the ``algorithm=`` configs, and the machine, the
versions and the git SHA recorded beside the numbers."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
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


def _matmul_ms(count: int = 100) -> float:
    """Milliseconds for ``count`` products of a 256x256 float32 matrix with itself, on the current thread."""
    a = torch.randn(256, 256)
    begin = time.perf_counter()
    for _ in range(count):
        a @ a
    return (time.perf_counter() - begin) * 1e3


def _neighbour(core: int, go: Any, busy: Any, quit_: Any, ready: Any) -> None:
    """:class:`CoreProbe`'s neighbour (a spawned process): computes while ``go`` is set, blocks otherwise."""
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    a @ a
    ready.set()
    while not quit_.is_set():
        if not go.wait(timeout=0.5):
            continue
        busy.set()
        while go.is_set():
            for _ in range(10):
                a @ a
        busy.clear()


#: A second core whose compute-bound neighbour slows the first by more than this is not spare
#: compute: the benchmarks report the repetitions that met such a minute apart.
SHARED_CORE = 1.2


class CoreProbe:
    """How much a compute-bound neighbour on a second core slows the first: 1.0 where they are two cores.

    The speed figures of this project assume that the worker's core is spare compute. A virtual
    machine's two vCPUs need not be: they may be two hyperthreads of one physical core, or share one
    by time slices, and then whatever the worker computes comes out of the trainer's core. This
    times a fixed matrix-product loop (one thread) on this process's first core, alone and while a
    neighbour process (spawned once, blocked in between, so that it costs the measurements around
    it nothing) runs the same loop on the second core. On this project's 2-vCPU VM it read 1.9-2.1
    and 0.9 within ten minutes of 2026-11-30: whether the worker's core is spare changes by the
    minute, so speed benchmarks probe it beside every repetition.

    Use as a context manager; :meth:`probe` is None with fewer than two cores or no affinity API.

    Example::

        >>> with CoreProbe() as cores:  # doctest: +SKIP
        ...     cores.probe()["slowdown"]
        1.03
    """

    def __init__(self) -> None:
        self._proc: Any = None
        self._cores: list[int] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []

    def __enter__(self) -> "CoreProbe":
        if len(self._cores) >= 2:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            self._go, self._busy, self._quit, ready = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event()
            self._proc = ctx.Process(target=_neighbour, args=(self._cores[1], self._go, self._busy, self._quit, ready),
                                     daemon=True)
            self._proc.start()
            if not ready.wait(timeout=120):  # its imports done: they would compete with the first reading
                self.__exit__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._go.clear()
            self._quit.set()
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc = None

    def probe(self, repeats: int = 2) -> dict[str, float] | None:
        """``{"alone_ms", "beside_ms", "slowdown"}``: medians of ``repeats`` alternations (about 0.1 s each here)."""
        if self._proc is None:
            return None
        threads = torch.get_num_threads()
        os.sched_setaffinity(0, {self._cores[0]})
        torch.set_num_threads(1)
        alone: list[float] = []
        beside: list[float] = []
        try:
            _matmul_ms(10)  # warm
            for _ in range(repeats):
                alone.append(_matmul_ms())
                self._go.set()
                if not self._busy.wait(timeout=60):
                    return None
                beside.append(_matmul_ms())
                self._go.clear()
                while self._busy.is_set():
                    time.sleep(0.001)
        finally:
            self._go.clear()
            os.sched_setaffinity(0, set(self._cores))
            torch.set_num_threads(threads)
        a, b = statistics.median(alone), statistics.median(beside)
        return {"alone_ms": a, "beside_ms": b, "slowdown": b / a}


def core_sharing(repeats: int = 3) -> dict[str, float] | None:
    """One :class:`CoreProbe` reading, with its own neighbour process (a few seconds, most of them its start)."""
    with CoreProbe() as cores:
        return cores.probe(repeats)


def environment(probe_cores: bool = True) -> dict[str, Any]:
    """The machine, the versions and the git SHA; with ``probe_cores``, :func:`core_sharing` too."""
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
    if probe_cores:
        env["core_sharing"] = core_sharing()
    return env


def environment_markdown(env: dict[str, Any]) -> str:
    gpu = f", GPU {env['cuda']}" if env.get("cuda") else ""
    shared = env.get("core_sharing")
    cores = (f" A compute-bound process on a second core slowed a fixed product loop on the first "
             f"{shared['slowdown']:.2f}x ({shared['alone_ms']:.0f} -> {shared['beside_ms']:.0f} ms; 1.00x: two real "
             "cores; see `_common.core_sharing`).") if shared else ""
    return (f"Machine: {env['cpu']} ({env['cores']} cores){gpu}; Python {env['python']}, torch {env['torch']}, "
            f"lightning {env['lightning']}, lightning_asyncsam {env['lightning_asyncsam']} at {env['git_sha']}; "
            f"{env['date']}.{cores}")


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
