"""Where the ascent runs when ``ascent_device="auto"``: a spare GPU, else the CPU worker.

The rule (issue 8), decided by each rank for itself:

1. a visible GPU that no rank of this trainer on this node uses: a whole device for the ascent
   (Table 4.2's "A6000 / A6000" setting); ranks share the spare GPUs round-robin;
2. else the trainer's own GPU when it trains on one. That needs the ascent inside the trainer's
   process on a low-priority stream, with no host round trip; until that path exists, a rank
   with no spare GPU uses rule 3 and says so;
3. else the CPU worker.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: Whether the ascent can share the trainer's own GPU (rule 2 above); see the module docstring.
SAME_GPU_ASCENT = False


def resolve_ascent_device(
    requested: str,
    trainer_device: torch.device,
    used_gpus: Sequence[int],
    visible_gpus: int,
    local_rank: int = 0,
) -> str:
    """The device for this rank's ascent.

    Args:
        requested: the ``ascent_device`` argument: ``"auto"`` or an explicit device.
        trainer_device: this rank's device.
        used_gpus: the GPU indices the ranks of this trainer use on this node.
        visible_gpus: ``torch.cuda.device_count()``.
        local_rank: this rank's index on the node (spreads the ranks over the spare GPUs).

    Returns:
        A device string for the worker.

    Example::

        >>> resolve_ascent_device("auto", torch.device("cuda", 0), used_gpus=[0], visible_gpus=2)
        'cuda:1'
        >>> resolve_ascent_device("auto", torch.device("cuda", 1), used_gpus=[0, 1], visible_gpus=4, local_rank=1)
        'cuda:3'
        >>> resolve_ascent_device("auto", torch.device("cpu"), used_gpus=[], visible_gpus=0)
        'cpu'
        >>> resolve_ascent_device("cuda:1", torch.device("cpu"), used_gpus=[], visible_gpus=2)
        'cuda:1'
    """
    if requested != "auto":
        return requested
    used = set(used_gpus)
    spare = [i for i in range(visible_gpus) if i not in used]
    if spare:
        return f"cuda:{spare[local_rank % len(spare)]}"
    if trainer_device.type == "cuda" and SAME_GPU_ASCENT:
        return str(trainer_device)
    return "cpu"


__all__ = ["SAME_GPU_ASCENT", "resolve_ascent_device"]
