"""What the ascent replica mirrors from the trainer's module at every step.

The worker's replica must compute ``g_t = grad L(w_t; A_t)`` at the trainer's ``w_t``: every
parameter, and every buffer that a training-mode forward reads. It runs in training mode
(``module.train()``), where torch's batch and instance normalizations normalize with the batch's
own statistics and only *write* their running statistics (``running_mean``, ``running_var``,
``num_batches_tracked``: the ``training`` branch of ``torch.nn.modules.batchnorm._BatchNorm.forward``
and of ``_InstanceNorm.forward``). Those buffers cannot change the ascent gradient, so they are not
published: on the digits recipe's CNN they were 9 of the 10 copies that publishing ``w_t`` cost
the trainer's thread every step. Only the exact torch classes are recognized; a subclass (a batch
renormalization, say) may read its statistics in training mode, and its buffers are mirrored.
"""

from __future__ import annotations

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
    names: set[str] = set()
    for prefix, sub in module.named_modules():
        if type(sub) in _STATS_WRITTEN_ONLY:
            for buffer in _RUNNING_STATS:
                if getattr(sub, buffer, None) is not None:
                    names.add(f"{prefix}.{buffer}" if prefix else buffer)
    return names


def mirrored_tensors(module: nn.Module) -> dict[str, Tensor]:
    """What the replica mirrors at every step: :func:`named_tensors` less :func:`unread_in_training`.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> list(mirrored_tensors(net))
        ['0.weight', '0.bias', '1.weight', '1.bias']
    """
    unread = unread_in_training(module)
    return {name: t for name, t in named_tensors(module).items() if name not in unread}


__all__ = ["mirrored_tensors", "named_tensors", "unread_in_training"]
