"""The LightningModule of the CLI: any network, cross-entropy, SGD with momentum, an LR schedule.

It knows nothing of SAM: the algorithm is chosen by the Trainer's strategy (``algorithm=`` in the
CLI), which is the point of the package. The optimizer and the scheduler arrive as factories
(Hydra ``_partial_: true`` configs), because they need the parameters and the optimizer, which
exist only once the module does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler]


class Classifier(pl.LightningModule):
    """Train ``net`` with cross-entropy; log ``train/loss``, ``train/lr``, ``val/loss``, ``val/acc``.

    Args:
        net: Network mapping a batch of inputs to ``[B, num_classes]`` logits.
        num_classes: Number of classes (for the accuracy metric).
        optimizer: Called with the trainable parameters; returns the optimizer, e.g.
            ``functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)``.
        scheduler: Called with the optimizer; returns an LR scheduler, or ``None`` for a constant LR.
        scheduler_interval: Step the scheduler every ``"epoch"`` or every optimizer ``"step"``.
        label_smoothing: Cross-entropy label smoothing (0 in every recipe; the paper has none).

    Example::

        module = Classifier(
            net=resnet20(num_classes=10),
            num_classes=10,
            optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
            scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=150),
        )
        Trainer(strategy=AsyncSAMStrategy(rho=0.1)).fit(module, datamodule)
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
        if not callable(optimizer):
            raise TypeError(f"optimizer must be a callable taking the parameters, got {optimizer!r}.")
        if scheduler is not None and not callable(scheduler):
            raise TypeError(f"scheduler must be None or a callable taking the optimizer, got {scheduler!r}.")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
        # The factories are not saved: the resolved Hydra config next to the checkpoint records them,
        # and keeping them out of the checkpoint lets it load with weights_only=True.
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.label_smoothing = label_smoothing
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_loss = MeanMetric()

    def forward(self, x: Tensor) -> Tensor:
        """Logits of ``net``."""
        return self.net(x)

    def _loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits, y

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy of one batch; SAM strategies also call this for their ascent gradient."""
        loss, _, _ = self._loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def per_sample(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Logits ``[b, C]`` and per-sample cross-entropies ``[b]``, whose mean is ``training_step``'s loss.

        ESAM and MESA call this instead of ``training_step`` (they rank samples by loss, or need the
        logits), so it logs ``train/loss`` as ``training_step`` does; their extra passes run with
        logging silenced.
        """
        x, y = batch
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none", label_smoothing=self.label_smoothing)
        self.log("train/loss", losses.mean(), on_step=True, on_epoch=False, prog_bar=True)
        return logits, losses

    def on_train_epoch_start(self) -> None:
        """Log the learning rate the epoch starts with (one value per epoch)."""
        optimizers = self.optimizers(use_pl_optimizer=False)
        optimizer = optimizers[0] if isinstance(optimizers, list) else optimizers
        self.log("train/lr", float(optimizer.param_groups[0]["lr"]), on_step=False, on_epoch=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate accuracy and the sample-weighted mean loss over the validation set."""
        loss, logits, y = self._loss(batch)
        self.val_acc.update(logits, y)
        self.val_loss.update(loss, weight=y.shape[0])
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        """The optimizer over trainable parameters, and the scheduler if one was given."""
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["Classifier", "count_parameters"]
