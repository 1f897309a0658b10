"""The memory format of the ascent replica's convolution weights: the worker's own choice.

The replica is the worker's copy of the module: the descent never sees it, so its layout is free
to be whatever computes the ascent fastest on the worker's device. On a CPU, oneDNN's convolutions
and PyTorch's pooling and normalization kernels run faster in ``channels_last`` (NHWC) than in the
default NCHW, and a convolution takes that layout when its weight has it, whatever its input's: its
output then carries it on to the next layer. Measured on this project's 2-core VM (one thread, a
forward and backward, float32; ``benchmarks/replica_layout.py --models``,
``benchmarks/results/replica_layout_models_cpu.md``):

=========================  ==========  ==============  =====
network, batch             NCHW        channels_last   ratio
=========================  ==========  ==============  =====
digits CNN, 32             2.18 ms     1.68 ms         0.77
digits CNN, 1              0.56 ms     0.53 ms         0.95
Speech Commands CNN, 8     55.2 ms     47.0 ms         0.85
ResNet-20 (CIFAR), 32      127 ms      112 ms          0.88
ResNet-50 (64 px), 4       1889 ms     1751 ms         0.93
=========================  ==========  ==============  =====

Less of the worker's CPU time at b' = b matters twice: the ascent hides behind shorter
descents, and on a machine whose cores share a clock, caches or a host core, every millisecond the
worker computes is one the trainer's core may lose. The values are the same up to rounding (the
summation order changes); the gradient leaves the worker in the trainer's layout.

``"auto"`` (the default) therefore puts a CPU replica's 4-D parameters in ``channels_last`` when
the module has any, and keeps the module's own layout otherwise (and on a GPU, where nothing was
measured). Where the module's code cannot run so (``x.view(n, -1)`` on a convolution's output
fails on a ``channels_last`` tensor), the worker goes back to the module's layout for the rest of
the fit, at the first step that fails, retries that step and says so once on the trainer's stderr
(which it inherits); ``"channels_last"`` asks for the layout on any device and fails instead,
naming the argument; ``"preserve"`` keeps the module's.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

MemoryFormat = Literal["auto", "channels_last", "preserve"]
MEMORY_FORMATS: tuple[str, ...] = get_args(MemoryFormat)

#: What the worker does with its replica: keep the module's layout, ``channels_last`` and fail where
#: the module's code cannot run so, or ``channels_last`` and fall back to the module's layout there.
ReplicaFormat = Literal["preserve", "channels_last", "channels_last_else_preserve"]


def replica_format(choice: MemoryFormat, device: torch.device, module: nn.Module) -> ReplicaFormat:
    """What ``ascent_memory_format=choice`` means for a replica of ``module`` computing on ``device``.

    Example::

        >>> conv, mlp, cpu = nn.Conv2d(3, 8, 3), nn.Linear(3, 8), torch.device("cpu")
        >>> replica_format("auto", cpu, conv), replica_format("auto", cpu, mlp)
        ('channels_last_else_preserve', 'preserve')
        >>> replica_format("auto", torch.device("cuda", 1), conv), replica_format("channels_last", cpu, mlp)
        ('preserve', 'channels_last')
    """
    if choice == "preserve":
        return "preserve"
    if choice == "channels_last":
        return "channels_last"
    if device.type == "cpu" and any(p.dim() == 4 for p in module.parameters()):
        return "channels_last_else_preserve"
    return "preserve"


@torch.no_grad()
def set_channels_last(module: nn.Module, on: bool) -> None:
    """Put the 4-D parameters of ``module`` in ``channels_last`` (``on``), or back in the default layout.

    The parameters stay the same objects, with the same values (``Parameter.data`` moves), so that
    whatever holds them (the worker's copies of ``w_t``, its gradient buffers) keeps working; the
    buffers are left alone (normalization statistics are 1-D).

    Example::

        >>> conv = nn.Conv2d(1, 8, 3)
        >>> set_channels_last(conv, True); conv.weight.stride()
        (9, 1, 3, 1)
        >>> set_channels_last(conv, False); conv.weight.stride()
        (9, 9, 3, 1)
    """
    layout = torch.channels_last if on else torch.contiguous_format
    for p in module.parameters():
        if p.dim() == 4:
            # to(), not contiguous(): a weight with one input channel is contiguous in both layouts,
            # and only its strides tell a convolution which one to run in.
            p.data = p.data.to(memory_format=layout)


__all__ = ["MEMORY_FORMATS", "MemoryFormat", "ReplicaFormat", "replica_format", "set_channels_last"]
