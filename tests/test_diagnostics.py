"""asyncsam/* metrics reach the trainer's loggers every step; "auto" settles and says so."""

from __future__ import annotations

import csv
import logging

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_asyncsam import AsyncSAMStrategy
from tiny import TinyClassifier, loader, make_data, trainer

METRICS = ["asyncsam/wait_ms", "asyncsam/ascent_ms", "asyncsam/ascent_batch_size", "asyncsam/ascent_grad_norm",
           "asyncsam/cos_sim", "asyncsam/overhead_ms", "asyncsam/perturb_ms"]


def _rows(tmp_path, strategy, epochs=2, n=48):
    logger = CSVLogger(tmp_path, name="run")
    t = trainer(strategy, max_epochs=epochs, logger=logger, log_every_n_steps=1)
    t.fit(TinyClassifier(), loader(make_data(n=n, dtype=torch.float32), 8))
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # The diagnostics reach the logger at the steps of Lightning's own values (train_loss), in rows of their own.
    ours = [r for r in rows if r["asyncsam/wait_ms"] != ""]
    assert [r["step"] for r in ours] == [r["step"] for r in rows if r.get("train_loss", "") != ""]
    return t, ours


def test_every_step_logs_the_diagnostics(tmp_path) -> None:
    t, rows = _rows(tmp_path, AsyncSAMStrategy(ascent_batch_size=0.5, ascent_threads=1))
    assert len(rows) == 12
    for name in METRICS:
        assert name in rows[0], name
    later = rows[1:]  # step 0 has no stale gradient yet: no ascent result, no cosine
    assert all(float(r["asyncsam/ascent_batch_size"]) == 4 for r in rows)
    assert all(float(r["asyncsam/wait_ms"]) >= 0 and float(r["asyncsam/ascent_ms"]) > 0 for r in later)
    assert all(-1.0 <= float(r["asyncsam/cos_sim"]) <= 1.0 for r in later)
    assert all(float(r["asyncsam/ascent_grad_norm"]) > 0 for r in later)
    assert rows[0]["asyncsam/cos_sim"] == ""
    # trainer.logged_metrics holds what reached the loggers, as Lightning's own log_metrics keeps it.
    for name in METRICS:
        assert t.logged_metrics[name] == pytest.approx(float(rows[-1][name]), rel=1e-6), name


def test_without_a_logger_nothing_is_logged() -> None:
    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=1, logger=False,
                log_every_n_steps=1)
    t.fit(TinyClassifier(), loader(make_data(n=16, dtype=torch.float32), 8))
    assert "asyncsam/overhead_ms" in t.callback_metrics
    assert not any(name.startswith("asyncsam/") for name in t.logged_metrics)


@pytest.mark.parametrize("adaptive", [False, True])
def test_the_logged_cosine_is_that_of_e_and_the_descent_gradient(tmp_path, adaptive: bool) -> None:
    """Without ``adaptive`` the cosine uses ||e|| from the worker's ||g||; with it, e itself (a Gram product)."""
    import lightning as L

    from lightning_asyncsam import AsyncSAMCallback
    from lightning_asyncsam.functional import cosine_similarity

    class Check(L.Callback):
        def __init__(self) -> None:
            self.pairs: list[tuple[float, float]] = []
            self._want: float | None = None

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # the gradients our cosine saw
            e = trainer.strategy.direction
            grads = [p.grad for p in trainer.strategy._params]
            self._want = None if e is None else float(cosine_similarity(e, grads))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync = next(c for c in trainer.callbacks if isinstance(c, AsyncSAMCallback))
            if self._want is not None:
                self.pairs.append((float(sync.metrics["asyncsam/cos_sim"]), self._want))

    check = Check()
    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1, adaptive=adaptive), max_epochs=2,
                log_every_n_steps=1, callbacks=[check])
    t.fit(TinyClassifier(), loader(make_data(n=48, dtype=torch.float32), 8))
    assert len(check.pairs) == 11  # every step but the unperturbed first
    for got, want in check.pairs:
        assert got == pytest.approx(want, abs=1e-5)


def test_the_latest_diagnostics_are_held_on_steps_that_do_not_log() -> None:
    """``AsyncSAMCallback.metrics`` serves per-step readers (benchmarks/throughput.py) between logging steps too."""
    import lightning as L

    from lightning_asyncsam import AsyncSAMCallback

    class Read(L.Callback):
        def __init__(self) -> None:
            self.perturb_ms: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync = next(c for c in trainer.callbacks if isinstance(c, AsyncSAMCallback))
            self.perturb_ms.append(sync.metrics["asyncsam/perturb_ms"])

    read = Read()
    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=1, log_every_n_steps=50,
                callbacks=[read])
    t.fit(TinyClassifier(), loader(make_data(n=48, dtype=torch.float32), 8))
    assert len(read.perturb_ms) == 6 and read.perturb_ms[0] == 0.0  # step 0 is not perturbed
    assert all(ms > 0 for ms in read.perturb_ms[1:])  # steps 1-4 do not log; each holds its own value


def test_overhead_is_accounted_on_logging_steps_alone_as_the_mean_over_the_window(monkeypatch) -> None:
    """Other steps run no account of their own; a logging step's overhead_ms is its window's added time per step.

    The strategy's added time is a running total: the window of ``asyncsam/overhead_ms`` is the
    difference since the last log, over the optimizer steps synchronized since then.
    """
    import lightning as L

    from lightning_asyncsam import AsyncSAMCallback
    from lightning_asyncsam.ascent import callback as callback_module

    published: list[tuple[int, float]] = []
    monkeypatch.setattr(callback_module, "publish_metrics", lambda trainer, metrics: published.append(
        (trainer.global_step, metrics["asyncsam/overhead_ms"])))
    ends = []
    original_end_step = AsyncSAMCallback.end_step
    monkeypatch.setattr(AsyncSAMCallback, "end_step",
                        lambda self, trainer, strategy: (ends.append(self.synced_step),
                                                         original_end_step(self, trainer, strategy))[1])

    class Totals(L.Callback):
        """The running total where each synchronized step starts (before synchronize adds to it)."""

        def __init__(self) -> None:
            self.at_start: list[float] = []
            self.logged: list[bool] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.at_start.append(trainer.strategy.added_total_ms())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.logged.append(next(c for c in trainer.callbacks if isinstance(c, AsyncSAMCallback)).log_step)

    totals = Totals()
    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=2, log_every_n_steps=4,
                callbacks=[totals])
    t.fit(TinyClassifier(), loader(make_data(n=96, dtype=torch.float32), 8))
    logging_steps = [i for i, flag in enumerate(totals.logged) if flag]
    assert logging_steps == [3, 7, 11, 15, 19, 23]  # every 4th step; each 12-step epoch ends on one
    assert ends == logging_steps  # the only steps that account for anything
    assert [step for step, _ in published] == logging_steps
    # Each window: from where the last one ended (inside its logging step) to inside this one, so it
    # lies between the totals at the starts of its first step and of the step after it, per step.
    for k, (step, value) in enumerate(published[1:-1], start=1):
        first, last = logging_steps[k - 1] + 1, logging_steps[k]
        steps = last - first + 1
        low = (totals.at_start[last] - totals.at_start[first]) / steps
        high = (totals.at_start[last + 1] - totals.at_start[first - 1]) / steps
        assert 0 < low <= value <= high, (step, low, value, high)


def test_a_retired_lookahead_keeps_its_time_in_the_running_total() -> None:
    """A new dataloader (a reload, a second fit) replaces the lookahead; the total it read never drops."""
    from lightning_asyncsam.ascent.lookahead import LookaheadLoader

    strategy = AsyncSAMStrategy(ascent_threads=1)
    strategy.lookahead = LookaheadLoader([1, 2, 3])
    strategy.lookahead.timer[0], strategy.added_ms = 5.0, 1.0
    assert strategy.added_total_ms() == 6.0
    strategy._retire_lookahead()
    assert strategy.lookahead is None and strategy.added_total_ms() == 6.0


def test_auto_batch_size_settles_and_prints_one_line(tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO):
        t, rows = _rows(tmp_path, AsyncSAMStrategy(ascent_threads=1), epochs=3, n=160)
    sizes = [float(r["asyncsam/ascent_batch_size"]) for r in rows]
    assert sizes[0] == 2  # b/4 before anything is measured
    assert all(1 <= s <= 8 for s in sizes)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("AsyncSAM: ascent batch")]
    assert len(lines) == 1 and " of 8 (descent " in lines[0] and "ms/sample on cpu x1)" in lines[0]


class SlowAscent(TinyClassifier):
    """A worker about 30 ms per sample slower than the main process: "auto" must fall to b' = 1."""

    def ascent_loss(self, batch):
        import time

        x, y = batch
        time.sleep(0.03 * len(x))
        return torch.nn.functional.cross_entropy(self(x), y)


def test_auto_warns_when_the_worker_is_too_slow_for_sams_gain(tmp_path) -> None:
    t = trainer(AsyncSAMStrategy(ascent_threads=1), max_epochs=2)
    with pytest.warns(UserWarning, match=r"b / b' = 8 is far past the paper's range"):
        t.fit(SlowAscent(), loader(make_data(n=160, dtype=torch.float32), 8))


@pytest.mark.parametrize(("every", "logged"), [(2, [1, 3, 5, 7]), (3, [2, 5]), (5, [3, 4, 7]), (50, [3, 7])],
                         ids=["every-2", "every-3", "every-5", "every-50"])
def test_the_diagnostics_log_at_an_epochs_end_only_when_the_epoch_has_not_logged(every, logged) -> None:
    """Steps log at Lightning's log_every_n_steps; an epoch's last step logs too when the epoch had no
    logging step (it is shorter than every + 1 steps), so callback_metrics hold values of every epoch."""
    import lightning as L

    from lightning_asyncsam import AsyncSAMCallback

    class Read(L.Callback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync = next(c for c in trainer.callbacks if isinstance(c, AsyncSAMCallback))
            if sync.log_step:
                self.steps.append(trainer.global_step - 1)

    read = Read()
    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=2, log_every_n_steps=every,
                callbacks=[read])
    t.fit(TinyClassifier(), loader(make_data(n=32, dtype=torch.float32), 8))  # 4 steps an epoch
    assert read.steps == logged
