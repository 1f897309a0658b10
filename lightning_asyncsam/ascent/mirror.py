"""What the ascent replica mirrors from the trainer's module at every step.

The worker's replica must compute ``g_t = grad L(w_t; A_t)`` at the trainer's ``w_t``: every
parameter, and every buffer that a training-mode forward reads. It runs in training mode
(``module.train()``; but see below for submodules that the user keeps in eval mode), where
torch's batch and instance normalizations normalize with the batch's own statistics and only
*write* their running statistics (``running_mean``, ``running_var``, ``num_batches_tracked``: the
``training`` branch of ``torch.nn.modules.batchnorm._BatchNorm.forward`` and of
``_InstanceNorm.forward``). Those buffers cannot change the ascent gradient, so they are not
published: on the digits recipe's CNN they were 9 of the 10 copies that publishing ``w_t`` cost
the trainer's thread every step. Only the exact torch classes are recognized; a subclass (a batch
renormalization, say) may read its statistics in training mode, and its buffers are mirrored.

A submodule that the user keeps in eval mode while training (a frozen batch norm, set in
``on_train_epoch_start`` or ``setup``) reads its running statistics and normalizes with them. So
the replica follows the trainer's modes: each epoch's first step sends them where they changed
(:func:`module_modes`), with the running statistics of the normalizations in eval mode
(:func:`eval_statistics`), which no step changes there; the worker applies both
(:func:`apply_modes`). A mode switched in the middle of an epoch reaches the replica at the next.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

# Normalizations whose training-mode forward never reads their running statistics.
_STATS_WRITTEN_ONLY = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
)
_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def named_tensors(module: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers by name (each tensor once, under its first name)."""
    out: dict[str, Tensor] = dict(module.named_parameters())
    out.update(dict(module.named_buffers()))
    return out


def unread_in_training(module: nn.Module) -> set[str]:
    """The names of the buffers that no training-mode forward of ``module`` reads (see the module's docstring).

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> sorted(unread_in_training(net))
        ['1.num_batches_tracked', '1.running_mean', '1.running_var']
    """
    return {name for name, _, _ in _running_statistics(module)}


def _running_statistics(module: nn.Module) -> Iterator[tuple[str, nn.Module, Tensor]]:
    """(name, normalization, buffer) of each running statistic that a training-mode forward only writes."""
    for prefix, sub in module.named_modules():
        if type(sub) in _STATS_WRITTEN_ONLY:
            for buffer in _RUNNING_STATS:
                value = getattr(sub, buffer, None)
                if value is not None:
                    yield (f"{prefix}.{buffer}" if prefix else buffer), sub, value


def mirrored_tensors(module: nn.Module) -> dict[str, Tensor]:
    """What the replica mirrors at every step: :func:`named_tensors` less :func:`unread_in_training`.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> list(mirrored_tensors(net))
        ['0.weight', '0.bias', '1.weight', '1.bias']
    """
    unread = unread_in_training(module)
    return {name: t for name, t in named_tensors(module).items() if name not in unread}


def module_modes(module: nn.Module) -> frozenset[str]:
    """The names of the submodules in eval mode (``""``: the module itself), as ``named_modules()`` gives them.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> module_modes(net)
        frozenset()
        >>> _ = net[1].eval()
        >>> module_modes(net)
        frozenset({'1'})
    """
    return frozenset(name for name, sub in module.named_modules() if not sub.training)


def eval_statistics(module: nn.Module) -> dict[str, Tensor]:
    """The running statistics that the normalizations in eval mode read (host copies, by buffer name).

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> sorted(eval_statistics(net)), sorted(eval_statistics(net.eval()))
        ([], ['1.num_batches_tracked', '1.running_mean', '1.running_var'])
    """
    return {name: value.detach().to("cpu", copy=True) for name, sub, value in _running_statistics(module)
            if not sub.training}


@torch.no_grad()
def apply_modes(module: nn.Module, in_eval: frozenset[str], statistics: dict[str, Tensor]) -> None:
    """Give the replica the trainer's modes (:func:`module_modes`) and eval-mode statistics (:func:`eval_statistics`).

    By name: a submodule that only one side has (the user's code made it after the worker started)
    is left as it is.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> replica = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> _ = net[1].running_mean.fill_(3.0), net[1].eval()
        >>> apply_modes(replica, module_modes(net), eval_statistics(net))
        >>> replica[1].training, replica[1].running_mean.tolist()
        (False, [3.0, 3.0])
    """
    for name, sub in module.named_modules():
        sub.training = name not in in_eval
    buffers = dict(module.named_buffers())
    for name, value in statistics.items():
        if name in buffers:
            buffers[name].copy_(value)


__all__ = ["apply_modes", "eval_statistics", "mirrored_tensors", "module_modes", "named_tensors", "unread_in_training"]
