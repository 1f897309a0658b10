"""AsyncSAM and SAM inside the Lightning features users combine them with (all on the CPU)."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
import torchmetrics
from lightning.pytorch.loggers import CSVLogger
from torch.nn import functional as F

import lightning_asyncsam.ascent.worker as worker_mod
from lightning_asyncsam import AsyncSAMStrategy, SAMStrategy
from tiny import (
    ManualClassifier,
    Recorder,
    TinyClassifier,
    _grads,
    _loss,
    _perturb,
    _restore,
    assert_trajectories_close,
    epochs_of,
    in_float64,
    loader,
    make_data,
    make_optimizer,
    reference_asyncsam,
    trainer,
)

B, RHO = 8, 0.3


def _asyncsam(**kw) -> AsyncSAMStrategy:
    kw.setdefault("ascent_batch_size", 4)
    return AsyncSAMStrategy(rho=RHO, ascent_threads=1, **kw)


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("make_strategy", [_asyncsam, lambda: SAMStrategy(rho=RHO)], ids=["asyncsam", "sam"])
def test_precisions_train(precision: str, make_strategy) -> None:
    model = TinyClassifier()
    before = [p.detach().clone() for p in model.parameters()]
    t = trainer(make_strategy(), max_epochs=2, precision=precision)
    t.fit(model, loader(make_data(dtype=torch.float32), B))
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert all(p.dtype == torch.float32 for p in after)  # restored weights keep the master dtype
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(after, before))
    assert t.global_step == 12


# ----------------------------------------------------------------------------- schedulers, clipping
class ScheduledClassifier(TinyClassifier):
    def configure_optimizers(self):
        opt = make_optimizer("sgd", self.parameters())
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_lr_scheduler_dict_and_gradient_clipping_match_reference() -> None:
    """Clipping sees the descent gradient at the restored weights; the scheduler steps per optimizer step."""
    model = in_float64(ScheduledClassifier)
    rec = Recorder()
    t = trainer(_asyncsam(ascent_data="previous"), max_epochs=3, precision="64-true", callbacks=[rec],
                gradient_clip_val=0.05)
    t.fit(model, loader(make_data(), B))

    net = in_float64(lambda: TinyClassifier().net)
    opt = make_optimizer("sgd", net.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    want, stale = [], None
    for batches in epochs_of(make_data(), B, 3):
        for batch in batches:
            g = _grads(net, tuple(x[:4] for x in batch))
            opt.zero_grad()
            old = _perturb(net, stale, RHO) if stale is not None else None
            _loss(net, batch).backward()
            if old is not None:
                _restore(net, old)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.05)
            opt.step()
            sched.step()
            stale = g
            want.append([p.detach().clone() for p in net.parameters()])
    assert_trajectories_close(rec.steps, want)
    assert math.isclose(t.optimizers[0].param_groups[0]["lr"], 0.1 * 0.5 ** (18 // 5))


# ----------------------------------------------------------------------------- BatchNorm
def test_batchnorm_statistics_update_at_the_perturbed_weights() -> None:
    """One forward per step in the main process, at w + e; the worker's forward leaves no trace."""
    model = in_float64(lambda: TinyClassifier(batchnorm=True))
    t = trainer(_asyncsam(ascent_data="previous"), max_epochs=2, precision="64-true")
    t.fit(model, loader(make_data(), B))

    net = in_float64(lambda: TinyClassifier(batchnorm=True).net)
    opt = make_optimizer("sgd", net.parameters())
    stale = None
    for batches in epochs_of(make_data(), B, 2):
        for batch in batches:
            g = _grads(copy.deepcopy(net), tuple(x[:4] for x in batch))  # the worker's replica
            opt.zero_grad()
            old = _perturb(net, stale, RHO) if stale is not None else None
            _loss(net, batch).backward()
            if old is not None:
                _restore(net, old)
            opt.step()
            stale = g
    got_state, want_state = model.net.state_dict(), net.state_dict()
    for name, want in want_state.items():
        assert torch.allclose(got_state[name].to(want.dtype), want, atol=1e-10, rtol=0), name
    assert model.net[1].num_batches_tracked.item() == 12


# ----------------------------------------------------------------------------- validation
class ValidatedClassifier(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=3)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val_acc", self.val_acc, on_epoch=True)


class NotPerturbedInEvaluation(L.Callback):
    def __init__(self) -> None:
        self.checked = 0

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        assert not trainer.strategy._perturbed
        self.checked += 1


def test_validation_is_never_perturbed_and_never_feeds_the_worker(monkeypatch, tmp_path) -> None:
    submitted = []
    real_submit = worker_mod.AscentWorker.submit
    monkeypatch.setattr(worker_mod.AscentWorker, "submit",
                        lambda self, step, *a, **k: (submitted.append(step), real_submit(self, step, *a, **k))[1])
    check = NotPerturbedInEvaluation()
    t = trainer(_asyncsam(), max_epochs=2, callbacks=[check], num_sanity_val_steps=2,
                logger=CSVLogger(tmp_path), log_every_n_steps=1)
    data = make_data(dtype=torch.float32)
    t.fit(ValidatedClassifier(), loader(data, B), loader(data, 16))
    assert submitted == list(range(12))  # one ascent per optimizer step, none for validation
    assert check.checked == 2 + 2 * 3
    assert 0.0 <= float(t.callback_metrics["val_acc"]) <= 1.0
    t.validate(ValidatedClassifier(), loader(data, 16))
    assert submitted == list(range(12))


# ----------------------------------------------------------------------------- manual optimization
def test_manual_optimization_matches_reference() -> None:
    model = in_float64(ManualClassifier)
    rec = Recorder()
    t = trainer(_asyncsam(ascent_data="previous"), max_epochs=2, precision="64-true", callbacks=[rec])
    t.fit(model, loader(make_data(), B))
    net = in_float64(lambda: TinyClassifier().net)
    want = reference_asyncsam(net, make_optimizer("sgd", net.parameters()), epochs_of(make_data(), B, 2), RHO, 4,
                              "previous")
    assert_trajectories_close(rec.steps, want)
    assert t.global_step == 12


class ManualWithoutAscentLoss(ManualClassifier):
    ascent_loss = None  # type: ignore[assignment]

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


@pytest.mark.parametrize("make_strategy", [_asyncsam, lambda: SAMStrategy(rho=RHO)], ids=["asyncsam", "sam"])
def test_manual_optimization_needs_ascent_loss(make_strategy) -> None:
    t = trainer(make_strategy(), max_epochs=1)
    with pytest.raises(ValueError, match="ascent_loss"):
        t.fit(ManualWithoutAscentLoss(), loader(make_data(dtype=torch.float32), B))


# ----------------------------------------------------------------------------- two fits, resume
def test_two_fit_calls_continue_the_trajectory() -> None:
    """The stale gradient outlives the worker between fits (fit() rebuilds optimizers: no momentum here)."""
    model = in_float64(lambda: TinyClassifier("plain_sgd"))
    rec = Recorder()
    t = trainer(_asyncsam(), max_epochs=2, precision="64-true", callbacks=[rec])
    t.fit(model, loader(make_data(), B))
    t.fit_loop.max_epochs = 4
    t.fit(model, loader(make_data(), B))
    net = in_float64(lambda: TinyClassifier().net)
    # The default ascent_data="next": the lookahead restarts with the second fit's loader.
    want = reference_asyncsam(net, make_optimizer("plain_sgd", net.parameters()), epochs_of(make_data(), B, 4), RHO, 4,
                              "next")
    assert_trajectories_close(rec.steps, want)


@pytest.mark.parametrize("ascent_data", ["previous", "next"])
@pytest.mark.parametrize("crash_epoch", [1, 2])
def test_resume_from_checkpoint_continues_the_trajectory(tmp_path, crash_epoch: int, ascent_data: str) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    full = in_float64(TinyClassifier)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    t = trainer(_asyncsam(ascent_data=ascent_data), max_epochs=4, precision="64-true", callbacks=[ckpt],
                enable_checkpointing=True)
    t.fit(full, loader(make_data(), B))

    path = tmp_path / f"epoch={crash_epoch - 1}.ckpt"
    state = torch.load(path, weights_only=True)
    assert any("AsyncSAMCallback" in k for k in state["callbacks"]), "the stale gradient is not in the checkpoint"
    resumed = in_float64(lambda: TinyClassifier(seed=123))  # other initial weights: the checkpoint must win
    t2 = trainer(_asyncsam(ascent_data=ascent_data), max_epochs=4, precision="64-true")
    t2.fit(resumed, loader(make_data(), B), ckpt_path=path)
    for a, b in zip(resumed.parameters(), full.parameters()):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
