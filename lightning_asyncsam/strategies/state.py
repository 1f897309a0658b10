"""``RuleStateCallback``: a sharpness-aware rule's own state, carried through checkpoints.

Some rules keep state across steps (LookSAM's g_v, ESAM's generator, AE-SAM's moments, MESA's EMA
model). A Lightning strategy has no slot of its own in a checkpoint, so the strategy connects this
callback to the trainer (like ``AsyncSAMCallback``): Lightning saves the callback's ``state_dict``
under ``checkpoint["callbacks"]`` and hands it back on resume, before the strategy is set up.
The strategy applies it in ``on_train_start``, once its buffers exist and the loops are restored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from typing_extensions import override

from lightning_asyncsam.batch_free import BatchFreeCallback

if TYPE_CHECKING:
    from lightning_asyncsam.strategies.base import SharpnessAwareStrategy


class RuleStateCallback(BatchFreeCallback):
    """Saves ``strategy.rule_state_dict()`` in checkpoints and queues it for the strategy on resume.

    Added by :class:`~lightning_asyncsam.strategies.base.SharpnessAwareStrategy`; users never add it.
    Lightning never calls it on a batch (see :mod:`lightning_asyncsam.batch_free`).

    Args:
        strategy: the strategy whose rule state this callback carries.

    Example::

        >>> from lightning_asyncsam import SAMStrategy
        >>> callback = RuleStateCallback(SAMStrategy())
        >>> callback.state_dict()  # plain SAM keeps no state between steps
        {}
    """

    def __init__(self, strategy: SharpnessAwareStrategy) -> None:
        self._strategy = strategy

    @override
    def state_dict(self) -> dict[str, Any]:
        return self._strategy.rule_state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._strategy._pending_rule_state = dict(state_dict)


__all__ = ["RuleStateCallback"]
