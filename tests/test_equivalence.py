"""The strategies against their serial plain-PyTorch references (tests/tiny.py), in float64, to 1e-10.

This is the proof that the asynchronous path is Eq. 3: same weights after every one of 24 steps.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_asyncsam import AsyncSAMStrategy, SAMStrategy
from tiny import (
    TinyClassifier,
    assert_trajectories_close,
    epochs_of,
    fit_float64,
    in_float64,
    make_conv_net,
    make_data,
    make_optimizer,
    reference_asyncsam,
    reference_net,
    reference_sam,
    reference_sgd,
)

B, EPOCHS, RHO = 8, 4, 0.3  # 48 samples / 8 = 6 steps an epoch, 24 steps in all

_fit = partial(fit_float64, epochs=EPOCHS, batch_size=B)
_reference_net = reference_net


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("ascent_batch_size", [B, B // 4])
@pytest.mark.parametrize("ascent_data", ["previous", "next"])
def test_asyncsam_matches_algorithm_1(optimizer: str, ascent_batch_size: int, ascent_data: str) -> None:
    got = _fit(AsyncSAMStrategy(rho=RHO, ascent_batch_size=ascent_batch_size, ascent_threads=1,
                                ascent_data=ascent_data), optimizer)
    net, opt = _reference_net(optimizer)
    want = reference_asyncsam(net, opt, epochs_of(make_data(), B, EPOCHS), RHO, ascent_batch_size, ascent_data)
    assert_trajectories_close(got, want)


class FrozenNorm(TinyClassifier):
    """Keeps its batch norm in eval mode from epoch ``frozen_from`` on, as fine-tuning code does."""

    def __init__(self, optimizer: str, frozen_from: int) -> None:
        super().__init__(optimizer, batchnorm=True)
        self.frozen_from = frozen_from

    def on_train_epoch_start(self) -> None:
        if self.current_epoch >= self.frozen_from:
            self.net[1].eval()


@pytest.mark.parametrize("frozen_from", [0, 1])
def test_asyncsam_replica_follows_a_frozen_batch_norm(frozen_from: int) -> None:
    """The replica runs the batch norm in eval mode too, with the trainer's running statistics.

    From epoch 1 on, those statistics are the ones the descent accumulated during epoch 0, which
    the replica never mirrors (its own ascents updated its copies): they travel with the modes.
    """
    got = _fit(AsyncSAMStrategy(rho=RHO, ascent_batch_size=B // 2, ascent_threads=1), "sgd",
               module=lambda optimizer: FrozenNorm(optimizer, frozen_from))
    net = in_float64(lambda: TinyClassifier("sgd", batchnorm=True).net)
    freeze = lambda epoch, n: n[1].eval() if epoch >= frozen_from else None  # noqa: E731
    want = reference_asyncsam(net, make_optimizer("sgd", net.parameters()), epochs_of(make_data(), B, EPOCHS), RHO,
                              B // 2, "next", before_epoch=freeze)
    assert_trajectories_close(got, want)


class TinyConv(TinyClassifier):
    """The tiny classifier with 2-D convolutions (tests/tiny.py's ``make_conv_net``)."""

    def __init__(self, optimizer: str, flatten_by_view: bool = False, probe: str | None = None) -> None:
        super().__init__(optimizer)
        self.net = make_conv_net(flatten_by_view=flatten_by_view, probe=probe)


def _replica_layouts(path: Path) -> list[str]:
    """The layouts that the worker's replica saw, in order (the trainer's own lines left out)."""
    lines = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return [layout for pid, layout in lines if int(pid) != os.getpid()]


@pytest.mark.parametrize(("memory_format", "flatten_by_view", "replica_sees"), [
    ("auto", False, "channels_last"),     # a CPU worker, a module with 4-D weights
    ("preserve", False, "contiguous"),
    ("auto", True, "back"),               # x.view(n, -1) fails in channels_last: the module's layout again
])
def test_asyncsam_matches_algorithm_1_whatever_the_replicas_layout(
        memory_format: str, flatten_by_view: bool, replica_sees: str, tmp_path: Path, capfd) -> None:
    """The replica's weights in channels_last change its speed, not the trajectory (Eq. 3 to 1e-10)."""
    probe = tmp_path / "layouts.txt"
    got = _fit(AsyncSAMStrategy(rho=RHO, ascent_batch_size=B // 2, ascent_threads=1,
                                ascent_memory_format=memory_format), "sgd",
               module=lambda optimizer: TinyConv(optimizer, flatten_by_view, str(probe)))
    net = in_float64(lambda: make_conv_net(flatten_by_view=flatten_by_view))
    want = reference_asyncsam(net, make_optimizer("sgd", net.parameters()), epochs_of(make_data(), B, EPOCHS), RHO,
                              B // 2, "next")
    assert_trajectories_close(got, want)
    seen = _replica_layouts(probe)
    assert len(seen) >= EPOCHS * 48 // B - 1  # every ascent but the first step's, which is never started
    said = capfd.readouterr().err.count("the ascent replica runs in the module's own memory format")
    if replica_sees == "back":  # the first ascent tried channels_last and failed; every later one ran as the module
        assert seen[0] == "channels_last" and set(seen[1:]) == {"contiguous"}
        assert said == 1  # once, on the inherited stderr
    else:
        assert set(seen) == {replica_sees} and said == 0


class FrozenConv(TinyConv):
    """The first convolution frozen, and rescaled by the trainer when epoch 1 starts: the replica must copy it again."""

    def __init__(self, optimizer: str) -> None:
        super().__init__(optimizer)
        self.net[1].weight.requires_grad_(False)

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 1:
            with torch.no_grad():
                self.net[1].weight.mul_(0.5)

    def configure_optimizers(self):
        return make_optimizer(self.optimizer_name, [p for p in self.parameters() if p.requires_grad])


def test_a_frozen_convolution_that_the_trainer_rewrites_reaches_the_replica_in_any_layout() -> None:
    """A frozen weight is mirrored apart from the trainable ones (copied when it changes), into channels_last too."""
    runs = {memory_format: _fit(AsyncSAMStrategy(rho=RHO, ascent_batch_size=B // 2, ascent_threads=1,
                                                 ascent_memory_format=memory_format), "sgd", module=FrozenConv)
            for memory_format in ("preserve", "auto", "channels_last")}
    assert_trajectories_close(runs["auto"], runs["preserve"], atol=1e-12)
    assert_trajectories_close(runs["channels_last"], runs["preserve"], atol=1e-12)


def test_an_explicit_channels_last_that_the_module_cannot_run_fails_naming_it() -> None:
    with pytest.raises(Exception, match="ascent_memory_format='channels_last'"):
        _fit(AsyncSAMStrategy(rho=RHO, ascent_batch_size=B, ascent_threads=1, ascent_memory_format="channels_last"),
             "sgd", module=lambda optimizer: TinyConv(optimizer, flatten_by_view=True))


@pytest.mark.parametrize("ascent_batch_size", [B, B // 4])
def test_asyncsam_matches_algorithm_1_with_lent_batches(ascent_batch_size: int) -> None:
    """No precision hook: the worker reads each next step's batch from the trainer's memory (lent_batch)."""
    lent: list[int] = []

    class Lent(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            lent.append(trainer.strategy.worker.slot.lent)

    got = _fit(AsyncSAMStrategy(rho=RHO, ascent_batch_size=ascent_batch_size, ascent_threads=1), "sgd",
               precision="32-true", callbacks=[Lent()])
    assert sum(1 for n in lent if n) == EPOCHS * (48 // B - 1) - 1  # all but each epoch's last and the layout's
    want = reference_asyncsam(*_reference_net("sgd"), epochs_of(make_data(), B, EPOCHS), RHO, ascent_batch_size, "next")
    assert_trajectories_close(got, want)


@pytest.mark.parametrize("ascent_data", ["previous", "next"])
def test_asyncsam_with_gradient_accumulation(ascent_data: str) -> None:
    """Every micro-batch of step t is perturbed by g_{t-1}; A_t comes from a first micro-batch."""
    got = _fit(AsyncSAMStrategy(rho=RHO, ascent_batch_size=4, ascent_threads=1, ascent_data=ascent_data), "sgd",
               accumulate=2)
    net, opt = _reference_net("sgd")
    want = reference_asyncsam(net, opt, epochs_of(make_data(), B, EPOCHS), RHO, 4, ascent_data, accumulate=2)
    assert_trajectories_close(got, want)


@pytest.mark.parametrize("ascent_data", ["previous", "next"])
def test_adaptive_asyncsam_matches_reference(ascent_data: str) -> None:
    """ASAM's rule on the stale gradient: e = rho T^2 g_{t-1} / ||T g_{t-1}||, T = |w_t| + eta on weights."""
    got = _fit(AsyncSAMStrategy(rho=RHO, ascent_batch_size=4, ascent_threads=1, ascent_data=ascent_data,
                                adaptive=True, eta=0.05), "sgd")
    net, opt = _reference_net("sgd")
    want = reference_asyncsam(net, opt, epochs_of(make_data(), B, EPOCHS), RHO, 4, ascent_data, adaptive=True, eta=0.05)
    assert_trajectories_close(got, want)
    plain = reference_asyncsam(*_reference_net("sgd"), epochs_of(make_data(), B, EPOCHS), RHO, 4, ascent_data)
    assert max((x - y).abs().max().item() for x, y in zip(plain[-1], want[-1])) > 1e-3  # ASAM is not SAM here


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_sam_matches_reference(optimizer: str) -> None:
    got = _fit(SAMStrategy(rho=RHO), optimizer)
    net, opt = _reference_net(optimizer)
    assert_trajectories_close(got, reference_sam(net, opt, epochs_of(make_data(), B, EPOCHS), RHO))


def test_sam_with_gradient_accumulation() -> None:
    got = _fit(SAMStrategy(rho=RHO), "sgd", accumulate=3)
    net, opt = _reference_net("sgd")
    assert_trajectories_close(got, reference_sam(net, opt, epochs_of(make_data(), B, EPOCHS), RHO, accumulate=3))


def test_reference_is_not_sgd() -> None:
    """Guards the guard: the references must differ from plain SGD, or the tests above prove nothing."""
    data = epochs_of(make_data(), B, EPOCHS)
    sgd = reference_sgd(*_reference_net("sgd"), data)
    asam = reference_asyncsam(*_reference_net("sgd"), data, RHO, B)
    sam = reference_sam(*_reference_net("sgd"), data, RHO)
    gap = lambda a, b: max((x - y).abs().max().item() for x, y in zip(a[-1], b[-1]))  # noqa: E731
    assert gap(sgd, asam) > 1e-3 and gap(sgd, sam) > 1e-3 and gap(sam, asam) > 1e-3
