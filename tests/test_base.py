"""The base every sharpness-aware strategy shares: argument checks, non-finite ascents, rule state."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch

from lightning_asyncsam import AsyncSAMStrategy, SAMStrategy
from lightning_asyncsam.strategies.state import RuleStateCallback
from tiny import FiniteOnlyClassifier, TinyClassifier, loader, make_data, make_data_with_nan, trainer


@pytest.mark.parametrize(("make", "name", "hint"), [
    (lambda: AsyncSAMStrategy(ascent_batchsize=8), "ascent_batchsize", "ascent_batch_size"),
    (lambda: SAMStrategy(rh=0.1), "rh", "rho"),
    (lambda: SAMStrategy(find_unused_paramters=True), "find_unused_paramters", "find_unused_parameters"),
])
def test_misspelt_arguments_raise_naming_them(make, name: str, hint: str) -> None:
    with pytest.raises(ValueError, match=rf"'{name}' \(did you mean '{hint}'\?\)"):
        make()


def test_arguments_for_ddp_are_still_accepted() -> None:
    strategy = SAMStrategy(find_unused_parameters=True, static_graph=False, process_group_backend="gloo")
    assert strategy._ddp_kwargs == {"find_unused_parameters": True, "static_graph": False}


def test_sam_never_applies_a_non_finite_ascent() -> None:
    """One NaN sample that training_step drops but ascent_loss keeps: SGD's behaviour, not NaN weights."""
    model = FiniteOnlyClassifier()
    t = trainer(SAMStrategy(rho=0.1), max_epochs=1, log_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(model, loader(make_data_with_nan(), 32))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert t.callback_metrics["sam/skipped_ascents"].item() == 1.0
    assert sum("non-finite gradient" in str(w.message) for w in caught) == 1


def test_finite_ascents_log_no_skip_and_no_warning() -> None:
    t = trainer(SAMStrategy(rho=0.1), max_epochs=1, log_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(TinyClassifier(), loader(make_data(dtype=torch.float32), 8))
    assert t.callback_metrics["sam/skipped_ascents"].item() == 0.0
    assert not any("non-finite gradient" in str(w.message) for w in caught)


class _Counting(SAMStrategy):
    """A stateful rule in miniature: counts its ascents and keeps the count in checkpoints."""

    def __init__(self) -> None:
        super().__init__(rho=0.1)
        self.ascents = 0
        self.restored: dict | None = None

    def _ascent_step(self, batch, batch_idx):
        self.ascents += 1
        return super()._ascent_step(batch, batch_idx)

    def rule_state_dict(self) -> dict:
        return {"ascents": self.ascents}

    def rule_load_state_dict(self, state: dict) -> None:
        self.restored = dict(state)
        self.ascents = state["ascents"]


def test_rule_state_travels_through_a_checkpoint(tmp_path) -> None:
    data = loader(make_data(dtype=torch.float32), 8)
    first = trainer(_Counting(), tmp_path, max_epochs=1)
    first.fit(TinyClassifier(), data)
    path = tmp_path / "mid.ckpt"
    first.save_checkpoint(path)
    assert torch.load(path, weights_only=True)["callbacks"]["RuleStateCallback"] == {"ascents": 6}

    resumed = _Counting()
    trainer(resumed, tmp_path, max_epochs=2).fit(TinyClassifier(), data, ckpt_path=path)
    assert resumed.restored == {"ascents": 6} and resumed.ascents == 12


def test_the_rule_state_callback_is_connected_once() -> None:
    t = trainer(_Counting(), max_epochs=1)
    model = TinyClassifier()
    t.fit(model, loader(make_data(dtype=torch.float32), 8))
    t.fit(model, loader(make_data(dtype=torch.float32), 8))
    assert sum(isinstance(c, RuleStateCallback) for c in t.callbacks) == 1


@pytest.mark.parametrize("make", [SAMStrategy, lambda: AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1)],
                         ids=["sam", "asyncsam"])
def test_a_rule_without_state_connects_no_rule_state_callback(make) -> None:
    """Lightning looks up every callback's hooks on every batch: a rule with nothing to save adds none."""
    t = trainer(make(), max_epochs=1)
    t.fit(TinyClassifier(), loader(make_data(dtype=torch.float32), 8))
    assert not any(isinstance(c, RuleStateCallback) for c in t.callbacks)


class Unfreezing(L.Callback):
    """What Lightning's BackboneFinetuning does at its epoch: a frozen layer joins the optimizer mid-fit."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            layer = pl_module.net[0]
            layer.requires_grad_(True)
            trainer.optimizers[0].add_param_group({"params": list(layer.parameters())})


class Frozen(TinyClassifier):
    """Its first layer frozen and outside the optimizer until Unfreezing adds it."""

    def configure_optimizers(self):
        self.net[0].requires_grad_(False)
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


class PerturbedLayers(L.Callback):
    """Per step: whether the first layer's weight differs, inside the perturbed forward, from the step's start."""

    def __init__(self) -> None:
        self.perturbed: dict[int, bool] = {}
        self._start: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = pl_module.net[0].weight.detach().clone()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.perturbed[trainer.global_step] = not torch.equal(pl_module.net[0].weight.detach(), self._start)


def test_asyncsam_perturbs_parameters_added_mid_fit() -> None:
    """The worker restarts with the new set: after one unperturbed step, the unfrozen layer is perturbed too."""
    probe = PerturbedLayers()
    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=3, callbacks=[Unfreezing(), probe])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "never perturbed" warning
        warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|isinstance).*")
        t.fit(Frozen(), loader(make_data(dtype=torch.float32), 8))
    n = 6  # steps an epoch
    assert not any(probe.perturbed[s] for s in range(n))  # frozen in epoch 0: never moved
    assert not probe.perturbed[n]  # the step at which the worker restarts runs unperturbed
    assert all(probe.perturbed[s] for s in range(n + 1, 3 * n))
    assert len(t.strategy._params) == len(list(Frozen().parameters()))


def test_sam_warns_that_parameters_added_mid_fit_are_not_perturbed() -> None:
    t = trainer(SAMStrategy(), max_epochs=3, callbacks=[Unfreezing()])
    with pytest.warns(UserWarning, match=r"now train 2 parameter\(s\) that they did not train when the fit started") as caught:
        t.fit(Frozen(), loader(make_data(dtype=torch.float32), 8))
    assert sum("now train" in str(w.message) for w in caught) == 1  # once per fit
