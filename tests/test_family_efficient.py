"""ESAM, AE-SAM and MESA: against their serial float64 references (tests/references_family.py), and
with what SAMStrategy works with (accumulation, clipping, bf16, resume, DDP, non-finite ascents)."""

from __future__ import annotations

from functools import partial

import functools
import warnings

import lightning as L
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DistributedSampler

from lightning_asyncsam import AESAMStrategy, ESAMStrategy, MESAStrategy, SAMStrategy
from references_family import reference_aesam, reference_esam, reference_mesa
from tiny import (
    assert_trajectories_close,
    epochs_of,
    FiniteOnlyClassifier,
    fit_float64,
    in_float64,
    loader,
    make_data,
    make_data_with_nan,
    reference_net,
    reference_sgd,
    TinyClassifier,
    trainer,
)

B, EPOCHS, RHO = 8, 4, 0.3  # 48 samples / 8 = 6 steps an epoch, 24 steps in all


class PerSampleClassifier(TinyClassifier):
    """TinyClassifier with the per-sample hook; its mean loss is exactly its training_step's loss."""

    def per_sample(self, batch):
        x, y = batch
        logits = self(x)
        return logits, F.cross_entropy(logits, y, reduction="none")


class FiniteOnlyPerSample(FiniteOnlyClassifier):
    """training_step drops non-finite samples; ascent_loss and per_sample keep them (issue 10)."""

    def per_sample(self, batch):
        x, y = batch
        logits = self(x)
        return logits, F.cross_entropy(logits, y, reduction="none")

_fit = partial(fit_float64, epochs=EPOCHS, batch_size=B, module=PerSampleClassifier)
_net = reference_net


def _gap(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a[-1], b[-1]))


def _data():
    return epochs_of(make_data(), B, EPOCHS)


# ----------------------------------------------------------------------------- ESAM
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_esam_matches_reference(optimizer: str, accumulate: int) -> None:
    got = _fit(ESAMStrategy(rho=RHO, beta=0.6, gamma=0.6, seed=3), optimizer, accumulate)
    want = reference_esam(*_net(optimizer), _data(), RHO, 0.6, 0.6, seed=3, accumulate=accumulate)
    assert_trajectories_close(got, want)


def test_esam_with_beta_and_gamma_one_is_sam() -> None:
    got = _fit(ESAMStrategy(rho=RHO, beta=1.0, gamma=1.0))
    assert_trajectories_close(got, _fit(SAMStrategy(rho=RHO)))


def test_esam_reference_is_neither_sam_nor_sgd() -> None:
    """Guards the guard: with beta, gamma < 1 the reference must differ from both SAM and SGD."""
    esam = reference_esam(*_net("sgd"), _data(), RHO, 0.6, 0.6, seed=3)
    sam = reference_esam(*_net("sgd"), _data(), RHO, 1.0, 1.0)
    sgd = reference_sgd(*_net("sgd"), _data())
    assert _gap(esam, sam) > 1e-3 and _gap(esam, sgd) > 1e-3 and _gap(sam, sgd) > 1e-3


# ----------------------------------------------------------------------------- AE-SAM
AESAM = dict(lambda1=-1.0, lambda2=1.0, decay=0.9)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_aesam_matches_reference(optimizer: str, accumulate: int) -> None:
    strategy = AESAMStrategy(rho=RHO, **AESAM)
    got = _fit(strategy, optimizer, accumulate)
    total = len(got)  # trainer.estimated_stepping_batches
    want, sam_steps = reference_aesam(*_net(optimizer), _data(), RHO, **AESAM, total=total, accumulate=accumulate)
    assert_trajectories_close(got, want)
    assert strategy.sam_steps == sam_steps
    assert 0 < sam_steps < total * accumulate  # both branches were taken: neither SAM nor SGD throughout


class _CountingSteps(PerSampleClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def training_step(self, batch, batch_idx):
        self.calls += 1
        self.log("batch_idx", float(batch_idx))
        return {"loss": super().training_step(batch, batch_idx), "extra": batch_idx}


class _SeesEveryStep(L.Callback):
    def __init__(self) -> None:
        self.logged: list[float] = []
        self.outputs: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.logged.append(trainer.callback_metrics["batch_idx"].item())
        self.outputs.append(outputs["extra"])


def test_aesam_sgd_steps_take_one_pass_and_keep_the_steps_logs_and_outputs() -> None:
    model, seen = _CountingSteps(), _SeesEveryStep()
    strategy = AESAMStrategy(rho=RHO, **AESAM)
    t = trainer(strategy, max_epochs=EPOCHS, callbacks=[seen], log_every_n_steps=1)
    t.fit(model, loader(make_data(dtype=torch.float32), B))
    steps = t.global_step
    assert 0 < strategy.sam_steps < steps
    assert model.calls == steps + strategy.sam_steps  # an ascent every step, a second pass on SAM steps only
    assert seen.logged == seen.outputs == [float(i) for _ in range(EPOCHS) for i in range(6)]


# ----------------------------------------------------------------------------- MESA
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_mesa_matches_reference(optimizer: str, accumulate: int) -> None:
    got = _fit(MESAStrategy(beta=0.9, lam=0.8, tau=1.5, start_epoch=1), optimizer, accumulate)
    want = reference_mesa(*_net(optimizer), _data(), 0.9, 0.8, 1.5, start_epoch=1, accumulate=accumulate)
    assert_trajectories_close(got, want)
    assert _gap(want, reference_sgd(*_net(optimizer), _data(), accumulate)) > 1e-3  # the KL term acts


@pytest.mark.parametrize("kwargs", [dict(lam=0.0, start_epoch=0), dict(lam=0.8, start_epoch=EPOCHS)],
                         ids=["lam0", "before_start_epoch"])
def test_mesa_without_its_term_is_sgd(kwargs: dict) -> None:
    got = _fit(MESAStrategy(beta=0.9, tau=1.5, **kwargs))
    assert_trajectories_close(got, reference_sgd(*_net("sgd"), _data()))


def test_mesa_teacher_runs_in_eval_mode_and_leaves_the_live_weights_and_modes() -> None:
    """BatchNorm: z_ema uses the averaged running statistics; the module's own buffers are untouched."""
    model = in_float64(lambda: PerSampleClassifier(batchnorm=True))
    model.net[1].eval()  # a frozen BatchNorm must stay frozen
    t = trainer(MESAStrategy(beta=0.5, start_epoch=0), max_epochs=1, precision="64-true")
    t.fit(model, loader(make_data(), B))
    strategy = t.strategy
    assert not model.net[1].training and model.net[0].training
    assert torch.equal(model.net[1].running_mean, torch.zeros(7, dtype=torch.float64))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(strategy._ema[0], next(model.parameters()))


# ----------------------------------------------------------------------------- resume
class _StopAfterOneEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


STATEFUL = {
    "esam": lambda: ESAMStrategy(rho=RHO, beta=0.6, gamma=0.6),
    "aesam": lambda: AESAMStrategy(rho=RHO, **AESAM),
    "mesa": lambda: MESAStrategy(beta=0.9, start_epoch=1),
}


@pytest.mark.parametrize("name", list(STATEFUL))
def test_resume_continues_the_trajectory(tmp_path, name: str) -> None:
    """Stop after epoch 1, resume to epoch 3: the same weights as one uninterrupted run."""
    data = loader(make_data(), B)
    full = in_float64(lambda: PerSampleClassifier())
    trainer(STATEFUL[name](), tmp_path, max_epochs=3, precision="64-true").fit(full, data)

    # max_epochs stays 3 (AE-SAM's T is the run's length): the first run is stopped after one epoch
    first = trainer(STATEFUL[name](), tmp_path, max_epochs=3, precision="64-true", callbacks=[_StopAfterOneEpoch()])
    first.fit(in_float64(lambda: PerSampleClassifier()), data)
    path = tmp_path / "mid.ckpt"
    first.save_checkpoint(path)
    assert torch.load(path, weights_only=True)["callbacks"]["RuleStateCallback"]  # the rule's state is in it
    resumed = in_float64(lambda: PerSampleClassifier(seed=123))
    trainer(STATEFUL[name](), tmp_path, max_epochs=3, precision="64-true").fit(resumed, data, ckpt_path=path)
    for a, b in zip(resumed.parameters(), full.parameters()):
        assert (a - b).abs().max().item() <= 1e-10


# ----------------------------------------------------------------------------- non-finite ascents
@pytest.mark.parametrize("make", [lambda: ESAMStrategy(rho=0.1), lambda: AESAMStrategy(rho=0.1)],
                         ids=["esam", "aesam"])
def test_a_non_finite_ascent_is_never_applied(make) -> None:
    """One NaN sample that only the ascent sees (ESAM's descent ranks it last): the weights stay finite."""
    strategy = make()
    t = trainer(strategy, max_epochs=1, log_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(model := FiniteOnlyPerSample(), loader(make_data_with_nan(), 32))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert t.callback_metrics["sam/skipped_ascents"].item() == 1.0
    assert sum("non-finite gradient" in str(w.message) for w in caught) == 1
    if isinstance(strategy, AESAMStrategy):
        assert torch.isfinite(torch.tensor([strategy.mu, strategy.var])).all()


# ----------------------------------------------------------------------------- errors, names, precision
@pytest.mark.parametrize("make", [ESAMStrategy, MESAStrategy], ids=["esam", "mesa"])
def test_a_module_without_per_sample_raises_naming_the_hook(make) -> None:
    with pytest.raises(ValueError, match=r"no `per_sample` hook.*per_sample\(self, batch\)"):
        trainer(make(), max_epochs=1).fit(TinyClassifier(), loader(make_data(dtype=torch.float32), B))


@pytest.mark.parametrize(("make", "name"), [
    (lambda: ESAMStrategy(beta=0.0), "beta"),
    (lambda: ESAMStrategy(gamma=1.5), "gamma"),
    (lambda: ESAMStrategy(rho=-1.0), "rho"),
    (lambda: ESAMStrategy(seed=-1), "seed"),
    (lambda: AESAMStrategy(decay=1.0), "decay"),
    (lambda: AESAMStrategy(lambda1=float("nan")), "lambda1"),
    (lambda: AESAMStrategy(lambda2="1"), "lambda2"),
    (lambda: MESAStrategy(beta=1.0), "beta"),
    (lambda: MESAStrategy(lam=-0.1), "lam"),
    (lambda: MESAStrategy(tau=0.0), "tau"),
    (lambda: MESAStrategy(start_epoch=1.5), "start_epoch"),
    (lambda: MESAStrategy(gama=0.6), "gama"),
])
def test_bad_arguments_raise_naming_them(make, name: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        make()


@pytest.mark.parametrize(("name", "cls", "method"), [
    ("esam", ESAMStrategy, "popen"), ("esam_spawn", ESAMStrategy, "spawn"),
    ("aesam_fork", AESAMStrategy, "fork"), ("mesa_notebook", MESAStrategy, "fork"),
])
def test_registered_names(name: str, cls: type, method: str) -> None:
    t = trainer(name)
    assert type(t.strategy) is cls and t.strategy._start_method == method


def test_registered_defaults_are_the_issues() -> None:
    esam, aesam, mesa = trainer("esam").strategy, trainer("aesam").strategy, trainer("mesa").strategy
    assert (esam.rho, esam.beta, esam.gamma) == (0.1, 0.6, 0.6)
    assert (aesam.rho, aesam.lambda1, aesam.lambda2, aesam.decay) == (0.1, -1.0, 1.0, 0.9)
    assert (mesa.beta, mesa.lam, mesa.tau, mesa.start_epoch) == (0.995, 0.8, 1.5, 5)


@pytest.mark.parametrize("make", [
    lambda: ESAMStrategy(rho=0.1), lambda: AESAMStrategy(rho=0.1), lambda: MESAStrategy(start_epoch=0),
], ids=["esam", "aesam", "mesa"])
def test_bf16_mixed_with_clipping(make) -> None:
    model = PerSampleClassifier()
    before = [p.detach().clone() for p in model.parameters()]
    t = trainer(make(), max_epochs=1, precision="bf16-mixed", gradient_clip_val=0.5)
    t.fit(model, loader(make_data(dtype=torch.float32), B))
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(model.parameters(), before))


# ----------------------------------------------------------------------------- DDP
class _SameOnEveryRank(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = trainer.strategy.all_gather(flat)
        assert torch.equal(gathered[0], gathered[1]), "DDP replicas diverged"
        if isinstance(trainer.strategy, AESAMStrategy):  # every rank took the same branch
            branches = trainer.strategy.all_gather(torch.tensor([trainer.strategy.sam_steps]))
            assert branches[0].item() == branches[1].item() > 0

    def on_train_end(self, trainer, pl_module) -> None:
        if isinstance(trainer.strategy, AESAMStrategy):  # SGD steps too: the reused gradient under DDP
            assert trainer.strategy.sam_steps < trainer.global_step


def _ddp_batches() -> list:
    """The batches of 8 that two ranks' shards of 4 make up under Lightning's shuffling DistributedSampler."""
    ds = make_data()
    epochs = []
    for epoch in range(EPOCHS):
        shards = []
        for rank in range(2):
            sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        steps = [shards[0][i : i + B // 2] + shards[1][i : i + B // 2] for i in range(0, len(shards[0]), B // 2)]
        epochs.append([ds[torch.tensor(idx)] for idx in steps])
    return epochs


def _serial(name: str):
    """The serial reference of a 2-rank run: the mean over the ranks is the mean over their union."""
    if name == "aesam":
        return reference_aesam(*_net("sgd"), _ddp_batches(), 0.1, **AESAM, total=EPOCHS * 6)[0]
    if name == "mesa":
        return reference_mesa(*_net("sgd"), _ddp_batches(), 0.995, 0.8, 1.5, start_epoch=1)
    return None  # ESAM perturbs each replica by its own shard's gradient, as SAM does: no serial twin


@pytest.mark.slow
@pytest.mark.parametrize(("name", "make"), [
    ("esam", functools.partial(ESAMStrategy, rho=0.1, start_method="spawn")),
    ("aesam", functools.partial(AESAMStrategy, rho=0.1, start_method="spawn")),
    ("mesa", functools.partial(MESAStrategy, start_epoch=1, start_method="spawn")),
], ids=["esam", "aesam", "mesa"])
def test_ddp_two_processes_on_cpu(name: str, make) -> None:
    model = in_float64(lambda: PerSampleClassifier())
    before = [p.detach().clone() for p in model.parameters()]
    t = trainer(make(), devices=2, max_epochs=EPOCHS, precision="64-true", callbacks=[_SameOnEveryRank()])
    t.fit(model, loader(make_data(), B // 2))
    # ddp_spawn hands rank 0's weights back to this process
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(model.parameters(), before))
    want = _serial(name)
    if want is not None:
        for a, b in zip(model.parameters(), want[-1]):
            assert (a.detach() - b).abs().max().item() <= 1e-10


# ----------------------------------------------------------------------------- the recipes' Classifier
def _classifier(label_smoothing: float = 0.0):
    from lightning_asyncsam.app.classifier import Classifier

    torch.manual_seed(0)
    return Classifier(net=torch.nn.Linear(5, 3), num_classes=3, label_smoothing=label_smoothing,
                      optimizer=functools.partial(torch.optim.SGD, lr=0.1))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_classifier_per_sample_agrees_with_training_step(label_smoothing: float) -> None:
    module = _classifier(label_smoothing)
    x, y = make_data(dtype=torch.float32).tensors
    module.log = lambda *a, **k: None  # outside a Trainer, Lightning's self.log would only warn
    logits, losses = module.per_sample((x[:8], y[:8]))
    assert logits.shape == (8, 3) and losses.shape == (8,)
    assert torch.allclose(losses.mean(), module.training_step((x[:8], y[:8]), 0), atol=1e-6)
    assert torch.allclose(losses[3], F.cross_entropy(logits[3:4], y[3:4], label_smoothing=label_smoothing))


@pytest.mark.parametrize("make", [lambda: ESAMStrategy(rho=0.1), lambda: MESAStrategy(start_epoch=0)],
                         ids=["esam", "mesa"])
def test_classifier_trains_and_logs_its_loss_under_the_per_sample_rules(make) -> None:
    t = trainer(make(), max_epochs=1, log_every_n_steps=1)
    t.fit(_classifier(), loader(make_data(dtype=torch.float32), B))
    assert torch.isfinite(t.callback_metrics["train/loss"])
