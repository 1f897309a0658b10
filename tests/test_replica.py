"""What a training step reads in AsyncSAM's ascent replica: the trainer stand-in and the ecosystem audit (issue 12).

The replica runs the user's ``training_step`` in the worker process. Each check below runs there
too: a wrong value fails the fit with the worker's traceback, and a marker file proves that the
replica, not only the main process, ran the check.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.nn import functional as F

from lightning_asyncsam import AsyncSAMStrategy
from lightning_asyncsam.ascent.replica import ReplicaAttributeError, TrainerStandIn
from lightning_asyncsam.ascent.worker import AscentWorkerError
from tiny import ManualClassifier, TinyClassifier, loader, make_data, trainer

BATCHES = 6  # 48 samples, batch 8


class Reader(TinyClassifier):
    """Reads what real training steps read, and checks every value against what the trainer holds."""

    def __init__(self, marker: str, read: str = "all") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.main_pid = os.getpid()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        t = self.trainer
        if self.hparams.read == "all":
            epoch = self.current_epoch
            assert self.global_step == epoch * BATCHES + batch_idx, (self.global_step, epoch, batch_idx)
            assert t.current_epoch == epoch and t.global_step == self.global_step
            assert (t.max_epochs, t.max_steps, t.estimated_stepping_batches) == (2, -1, 2 * BATCHES)
            assert (t.num_training_batches, t.accumulate_grad_batches) == (BATCHES, 1)
            assert (t.world_size, t.global_rank, t.local_rank, t.is_global_zero) == (1, 0, 0, True)
            assert t.training and not t.sanity_checking and not t.fast_dev_run
            assert t.precision == "32-true"
            lr = 0.1 * 0.5 ** epoch  # StepLR below
            assert abs(t.optimizers[0].param_groups[0]["lr"] - lr) < 1e-12
            assert abs(self.optimizers().param_groups[0]["lr"] - lr) < 1e-12
            assert self.device == torch.device("cpu") and self.dtype == torch.float32
            assert self.hparams.marker == self.hparams["marker"]
            self.log("train_loss", loss, sync_dist=True)
            self.log_dict({"a": loss, "b": loss}, sync_dist=True)
        elif os.getpid() != self.main_pid:  # in the main process these are the real trainer's
            eval(self.hparams.read)  # noqa: S307 - the test's own expressions
        if os.getpid() != self.main_pid:
            Path(self.hparams.marker).write_text("replica ran the checks")
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


def _fit(model: L.LightningModule, **kwargs) -> L.Trainer:
    t = trainer(AsyncSAMStrategy(rho=0.1, ascent_batch_size=4, ascent_threads=1), max_epochs=2, **kwargs)
    t.fit(model, loader(make_data(dtype=torch.float32), 8))
    return t


def test_the_replica_reads_the_trainers_state_kept_current(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    t = _fit(Reader(str(marker)))
    assert marker.exists()  # the replica ran every check above at every step, epochs 0 and 1
    assert t.global_step == 2 * BATCHES and "train_loss" in t.callback_metrics


@pytest.mark.parametrize(
    ("read", "named"),
    [
        ("self.trainer.datamodule", "`self.trainer.datamodule`"),
        ("self.trainer.callbacks", "`self.trainer.callbacks`"),
        ("self.lr_schedulers()", "`self.lr_schedulers()`"),
        ("self.trainer.optimizers[0].state", "`optimizer.state`"),
    ],
)
def test_what_the_replica_cannot_provide_fails_at_once_naming_it(tmp_path: Path, read: str, named: str) -> None:
    with pytest.raises(AscentWorkerError, match=r"(?s)ReplicaAttributeError: " + named.replace("(", r"\(")
                       .replace(")", r"\)") + r".*away from the Trainer.*ascent_loss\(self, batch\)"):
        _fit(Reader(str(tmp_path / "marker"), read=read))


def test_getattr_with_a_default_still_works_in_the_replica(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    _fit(Reader(str(marker), read="getattr(self.trainer, 'datamodule', None)"))
    assert marker.exists()


def test_the_stand_in_is_read_only() -> None:
    t = TrainerStandIn({"max_epochs": 3, "optimizers": [[{"lr": 0.1}]]})
    with pytest.raises(ReplicaAttributeError, match="setting `self.trainer.max_epochs`"):
        t.max_epochs = 4
    with pytest.raises(TypeError):
        t.optimizers[0].param_groups[0]["lr"] = 1.0  # type: ignore[index]
    assert not hasattr(t, "datamodule") and t.logger is None and t.loggers == []


class ManualReader(ManualClassifier):
    """Manual optimization: ``manual_backward`` in the training step, ``ascent_loss`` for the replica."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.main_pid = os.getpid()

    def ascent_loss(self, batch):
        assert self.trainer.optimizers[0].param_groups[0]["lr"] == 0.1 and self.trainer.max_epochs == 2
        if os.getpid() != self.main_pid:
            Path(self.marker).write_text("replica")
        return super().ascent_loss(batch)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss, sync_dist=True)
        return loss


def test_manual_optimization_with_ascent_loss_reads_the_stand_in(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    t = _fit(ManualReader(str(marker)))
    assert marker.exists() and t.global_step == 2 * BATCHES


class ManualBackwardInAscent(ManualReader):
    def ascent_loss(self, batch):
        loss = super().ascent_loss(batch)
        if os.getpid() != self.main_pid:
            self.manual_backward(loss)
        return loss


def test_manual_backward_in_the_replica_is_refused_with_the_remedy(tmp_path: Path) -> None:
    with pytest.raises(AscentWorkerError, match=r"`self.manual_backward\(\)` \(return the loss from `ascent_loss`"):
        _fit(ManualBackwardInAscent(str(tmp_path / "marker")))


class InReplica(TinyClassifier):
    """A module that writes ``path`` from its replica: the process that runs it is not the one that built it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.main_pid = os.getpid()

    @property
    def in_replica(self) -> bool:
        return os.getpid() != self.main_pid


class StepScheduled(InReplica):
    """Adam under OneCycleLR stepped every optimizer step: the learning rate and ``betas`` change at every step."""

    def training_step(self, batch, batch_idx):
        if self.in_replica:  # the replica writes what its stand-in holds at this step
            group = self.trainer.optimizers[0].param_groups[0]
            with open(self.path, "a") as f:
                f.write(f"{self.global_step} {self.current_epoch} {group['lr']!r} {group['betas']!r} "
                        f"{group['weight_decay']!r}\n")
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.01, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=2 * BATCHES + 2)
        return [opt], [{"scheduler": sched, "interval": "step"}]


def test_a_per_step_scheduler_reaches_the_replica_through_shared_memory(tmp_path: Path, monkeypatch) -> None:
    """Numbers that change alone (lr, Adam's betas, the epoch) reach the stand-in every step without a pipe message."""
    from lightning_asyncsam.ascent.worker import AscentWorker

    messages: list[int] = []
    sync = AscentWorker._sync_trainer

    def counting(self, conn):
        sent = sync(self, conn)
        messages.append(sent)
        return sent

    monkeypatch.setattr(AscentWorker, "_sync_trainer", counting)
    seen: dict[int, str] = {}

    class Main(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            group = trainer.optimizers[0].param_groups[0]
            seen[trainer.global_step] = (f"{trainer.current_epoch} {group['lr']!r} {group['betas']!r} "
                                         f"{group['weight_decay']!r}")

    log = tmp_path / "replica.log"
    t = trainer(AsyncSAMStrategy(rho=0.1, ascent_batch_size=4, ascent_threads=1), max_epochs=2, callbacks=[Main()])
    t.fit(StepScheduled(str(log)), loader(make_data(dtype=torch.float32), 8))
    rows = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert len(rows) == 2 * BATCHES and len(set(seen.values())) == 2 * BATCHES  # a new lr every step
    for step, values in rows:
        assert values == seen[int(step)], (step, values, seen[int(step)])  # exactly the trainer's, reprs equal
    # The first step sends everything; the scheduler's steps and the second epoch, nothing.
    assert messages == [1] + [0] * (2 * BATCHES - 1)


class FrozenScale(InReplica):
    """A frozen parameter and a buffer that the forward reads, changed by a callback after every step."""

    def __init__(self, log: str) -> None:
        super().__init__(log)
        self.scale = torch.nn.Parameter(torch.ones(1), requires_grad=False)
        self.register_buffer("shift", torch.zeros(1))

    def forward(self, x):
        return super().forward(x) * self.scale + self.shift

    def training_step(self, batch, batch_idx):
        if self.in_replica:
            with open(self.path, "a") as f:
                f.write(f"{self.global_step} {self.scale.item()!r} {self.shift.item()!r}\n")
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


def test_frozen_tensors_that_change_reach_the_replica(tmp_path: Path) -> None:
    """The rest (parameters outside the optimizer, buffers) crosses when it changes, so the replica reads its values."""
    seen: dict[int, str] = {}

    class Change(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen[trainer.global_step] = f"{pl_module.scale.item()!r} {pl_module.shift.item()!r}"

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            with torch.no_grad():
                if batch_idx % 2 == 0:
                    pl_module.scale.mul_(1.5)
                else:
                    pl_module.shift.add_(0.25)

    log = tmp_path / "replica.log"
    t = trainer(AsyncSAMStrategy(rho=0.1, ascent_batch_size=4, ascent_threads=1), max_epochs=2, callbacks=[Change()])
    t.fit(FrozenScale(str(log)), loader(make_data(dtype=torch.float32), 8))
    rows = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert len(rows) == 2 * BATCHES and len(set(seen.values())) == 2 * BATCHES
    for step, values in rows:
        assert values == seen[int(step)], (step, values, seen[int(step)])


class Named(InReplica):
    """Batches carry a name per sample (as file names do); the replica checks that its names match its samples."""

    def training_step(self, batch, batch_idx):
        x, y, names = batch
        if self.in_replica:
            assert [f"{v:.6f}" for v in x[:, 0].tolist()] == list(names[:len(x)]), (names, x[:, 0])
            Path(self.path).write_text("replica checked its names")
        return super().training_step((x, y), batch_idx)


def test_per_sample_names_reach_the_replica_with_their_samples(tmp_path: Path) -> None:
    data = make_data(dtype=torch.float32)
    named = [(x, y, f"{x[0].item():.6f}") for x, y in data]
    marker = tmp_path / "marker"
    t = trainer(AsyncSAMStrategy(rho=0.1, ascent_batch_size=4, ascent_threads=1), max_epochs=2)
    t.fit(Named(str(marker)), torch.utils.data.DataLoader(named, batch_size=8, shuffle=True))
    assert marker.exists() and t.global_step == 2 * BATCHES


class GroupReader(InReplica):
    """The replica writes its param group as it sees it at each step."""

    def training_step(self, batch, batch_idx):
        if self.in_replica:
            group = dict(self.trainer.optimizers[0].param_groups[0])
            with open(self.path, "a") as f:
                f.write(f"{self.global_step} {group['lr']!r} {group.get('note')!r}\n")
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_hyperparameters_stay_exact_across_messages_and_writes_in_place(tmp_path: Path) -> None:
    """Numbers written in place, then a new key (a message), an lr back at its first value, the key removed."""
    seen: dict[int, str] = {}

    class Edit(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            step, group = trainer.global_step, trainer.optimizers[0].param_groups[0]
            if step < 4:
                group["lr"] = 0.1 * (step + 1)  # numbers alone: in place
            elif step == 4:
                group["note"] = "warm"  # a new key: a message
            elif step == 5:
                group["lr"] = 0.1  # the value of the first message, through the shared block
            elif step == 6:
                del group["note"]  # a key gone: a message
            else:
                group["lr"] = 0.01 * step
            seen[step] = f"{group['lr']!r} {group.get('note')!r}"

    log = tmp_path / "replica.log"
    t = trainer(AsyncSAMStrategy(rho=0.1, ascent_batch_size=4, ascent_threads=1), max_epochs=2, callbacks=[Edit()])
    t.fit(GroupReader(str(log)), loader(make_data(dtype=torch.float32), 8))
    rows = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert len(rows) == 2 * BATCHES
    for step, values in rows:
        assert values == seen[int(step)], (step, values, seen[int(step)])


def test_modes_reach_the_replica_by_name_and_skip_what_only_one_side_has() -> None:
    """A submodule made after the worker started (on either side) neither fails nor shifts the others' modes."""
    from lightning_asyncsam.ascent.mirror import apply_modes, eval_statistics, module_modes

    trainer_side = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Dropout())
    trainer_side.add_module("late", torch.nn.ReLU())  # only the trainer's module has it
    trainer_side[1].running_var.fill_(4.0)
    trainer_side[2].eval()
    trainer_side[1].eval()
    replica = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Dropout())
    replica.add_module("own", torch.nn.Tanh())  # only the replica has it
    replica.eval()  # every module's flag is set, not only those the trainer's side names
    apply_modes(replica, module_modes(trainer_side), eval_statistics(trainer_side))
    assert [m.training for m in replica] == [True, False, False, True]
    assert replica.training and replica[1].running_var.tolist() == [4.0, 4.0]
