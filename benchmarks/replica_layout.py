"""The ascent replica's layout (``ascent_memory_format``): what it saves the worker, and the trainer beside it.

Two measurements, one thread each, as the CPU simulation runs (see benchmarks/README.md):

* ``--models``: one forward and backward of each CPU recipe's network, with its weights in the
  default layout and in ``channels_last``, interleaved; the median of each (the table in
  ``lightning_asyncsam/ascent/memory_format.py``).
* the default: the digits recipe's CNN (b = 32, b' = b), SGD and AsyncSAM with
  ``ascent_memory_format="preserve"`` and ``"auto"`` (channels_last) fitted in turn, the order
  rotating, the second core probed around every fit; per fit the median step and the worker's
  median ``asyncsam/ascent_ms``, then the medians over repetitions of the paired ratios.

Commands:
    python benchmarks/replica_layout.py --models              # ~1 min
    python benchmarks/replica_layout.py --models --device cuda # a spare GPU as the ascent device ("auto" keeps
                                                              # the module's layout there until this is read)
    python benchmarks/replica_layout.py --repeats 12          # ~2 min
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import overhead  # noqa: E402
from _common import CoreProbe, environment, environment_markdown, write_results  # noqa: E402

from lightning_asyncsam import AsyncSAMStrategy  # noqa: E402
from lightning_asyncsam.ascent.callback import AsyncSAMCallback  # noqa: E402
from lightning_asyncsam.ascent.memory_format import set_channels_last  # noqa: E402

ARMS = (("sgd", None), ("preserve", "preserve"), ("channels_last", "auto"))


def _models() -> list[tuple[str, Any, tuple[int, ...], int, int]]:
    from lightning_asyncsam.app.models.conv_net import digits_cnn, speech_cnn
    from lightning_asyncsam.app.models.resnet_cifar import resnet20
    from lightning_asyncsam.app.models.resnet_imagenet import imagenet_resnet

    # (name, network, input shape, classes, timed passes)
    return [("digits CNN, b' = 32", digits_cnn(), (32, 1, 8, 8), 10, 200),
            ("digits CNN, b' = 1", digits_cnn(), (1, 1, 8, 8), 10, 200),
            ("Speech Commands CNN, 8", speech_cnn(), (8, 1, 40, 101), 35, 20),
            ("ResNet-20 (CIFAR), 32", resnet20(), (32, 3, 32, 32), 10, 20),
            ("ResNet-20 (CIFAR), 4", resnet20(), (4, 3, 32, 32), 10, 40),
            ("ResNet-50 (64 px), 4", imagenet_resnet("resnet50", 200, "small"), (4, 3, 64, 64), 200, 6)]


def _pass_ms(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, count: int) -> list[float]:
    cuda = x.is_cuda
    times = []
    for _ in range(count):
        if cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        if cuda:  # the kernels' time, not their launches'
            torch.cuda.synchronize(x.device)
        times.append((time.perf_counter() - start) * 1e3)
    return times[2:]


def models(rounds: int, device: str = "cpu") -> tuple[dict[str, Any], str]:
    """Forward and backward per model in both layouts, ``rounds`` interleaved blocks of each, on ``device``."""
    rows, payload = [], {}
    for name, net, shape, classes, count in _models():
        torch.manual_seed(0)
        x, y = torch.randn(*shape, device=device), torch.randint(0, classes, (shape[0],), device=device)
        net.to(device)
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(rounds):
            for on in ((False, True) if r % 2 == 0 else (True, False)):
                set_channels_last(net, on)
                times[on] += _pass_ms(net, x, y, max(3, count // rounds))
        a, b = statistics.median(times[False]), statistics.median(times[True])
        payload[name] = {"contiguous_ms": a, "channels_last_ms": b}
        rows.append(f"| {name} | {a:.2f} ms | {b:.2f} ms | {b / a:.2f} |")
        print(rows[-1], flush=True)
    where = "1 thread" if device == "cpu" else f"on {torch.cuda.get_device_name(device)}"
    table = "\n".join([
        f"One forward and backward (float32, {where}), the network's weights in the default layout and in "
        f"channels_last, {rounds} interleaved blocks; medians.", "",
        "| network, batch | default layout | channels_last | ratio |", "|---|---|---|---|", *rows])
    return payload, table


class _AscentMs(L.Callback):
    """The worker's ``asyncsam/ascent_ms`` at every step after the first epoch."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        sync = getattr(trainer.strategy, "_sync", None)
        if trainer.current_epoch >= 1 and sync is not None and sync._ascent_ms is not None:
            self.values.append(sync._ascent_ms)


def fits(repeats: int, epochs: int) -> tuple[dict[str, Any], str]:
    """The digits recipe: SGD and AsyncSAM in each layout, interleaved (see the module's docstring)."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in ARMS}
    with tempfile.TemporaryDirectory() as tmp, CoreProbe() as cores:
        overhead.fit("sgd", 2, 0, tmp)  # warm-up
        for r in range(repeats):
            for name, choice in ARMS[r % 3:] + ARMS[:r % 3]:
                package = None if choice is None else types.SimpleNamespace(
                    AsyncSAMStrategy=functools.partial(AsyncSAMStrategy, ascent_memory_format=choice),
                    AsyncSAMCallback=AsyncSAMCallback)
                ascent = _AscentMs()
                before = cores.probe()
                clock = overhead.fit("sgd" if choice is None else "asyncsam", epochs, r, tmp, extra=[ascent],
                                     package=package)
                after = cores.probe()
                runs[name].append({"median_step_ms": overhead.steady_step(clock.step_s) * 1e3,
                                   "steady_epoch_s": overhead.steady(clock.epochs),
                                   "ascent_ms": statistics.median(ascent.values) if ascent.values else None,
                                   "core_slowdown": [p["slowdown"] for p in (before, after) if p]})
                print(f"repeat {r} {name:13s} median step {runs[name][-1]['median_step_ms']:.3f} ms, ascent "
                      f"{runs[name][-1]['ascent_ms'] or 0:.3f} ms", flush=True)

    def paired(a: str, b: str, key: str) -> float:
        return statistics.median(x[key] / y[key] for x, y in zip(runs[a], runs[b]))

    rows = []
    for name, _ in ARMS:
        step = statistics.median(run["median_step_ms"] for run in runs[name])
        if name == "sgd":
            rows.append(f"| SGD | {step:.3f} ms | | | | |")
            continue
        ascent = statistics.median(run["ascent_ms"] for run in runs[name])
        rows.append(f"| AsyncSAM, {name} | {step:.3f} ms | {paired(name, 'sgd', 'median_step_ms'):.3f} | "
                    f"{paired(name, 'preserve', 'median_step_ms'):.3f} | {ascent:.3f} ms | "
                    f"{paired(name, 'preserve', 'ascent_ms'):.3f} |")
    spare = sum(all(s < 1.2 for s in run["core_slowdown"]) for rep in zip(*runs.values()) for run in rep) // len(ARMS)
    table = "\n".join([
        f"Digits recipe (b = b' = 32), trainer and worker at 1 thread each; {repeats} repetitions of {epochs} epochs, "
        "the three arms interleaved, the order rotating. Median step: over epochs 2..N of a fit, median over "
        "repetitions; x SGD and x preserve: medians of the repetitions' paired ratios. `asyncsam/ascent_ms`: the "
        f"worker's time per ascent (its median per fit). {spare} of {repeats} repetitions' fits met a spare second "
        "core by the probe (< 1.2x).", "",
        "| | median step | x SGD, paired | x preserve, paired | worker's ascent | ascent x preserve, paired |",
        "|---|---|---|---|---|---|",
        *rows])
    summary = {"step_x_sgd": {n: paired(n, "sgd", "median_step_ms") for n, _ in ARMS[1:]},
               "channels_last_step_x_preserve": paired("channels_last", "preserve", "median_step_ms"),
               "channels_last_ascent_x_preserve": paired("channels_last", "preserve", "ascent_ms")}
    return {"runs": runs, "summary": summary}, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", action="store_true", help="time each network's pass in both layouts instead")
    parser.add_argument("--rounds", type=int, default=4, help="with --models: interleaved blocks per layout")
    parser.add_argument("--device", default="cpu", help="with --models: where the networks compute (cpu, cuda, ...)")
    parser.add_argument("--repeats", type=int, default=9, help="fits of each arm, interleaved")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per fit (the first is not counted)")
    parser.add_argument("--name", default=None, help="results/<name>.{json,md}; default: by the mode")
    args = parser.parse_args()
    if args.rounds < 1 or args.repeats < 1 or args.epochs < 2:
        parser.error("--rounds and --repeats must be >= 1, --epochs >= 2")
    torch.set_num_threads(1)
    config = vars(args)
    if args.models:
        payload, table = models(args.rounds, args.device)
        name = args.name or f"replica_layout_models_{torch.device(args.device).type}"
    else:
        payload, table = fits(args.repeats, args.epochs)
        name = args.name or "replica_layout_digits_cpu"
    env = environment()
    table = f"{table}\n\n{environment_markdown(env)}"
    print(table)
    write_results(name, {"config": config, "environment": env, **payload}, table)


if __name__ == "__main__":
    main()
