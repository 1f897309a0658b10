"""``BatchFreeCallback``: a callback that Lightning does not call on every batch.

Lightning dispatches every hook of every callback on every batch (``_call_callback_hooks`` in
``lightning/pytorch/trainer/call.py``): for each callback it looks the hook up, formats a profiler
action name and enters the profiler's context manager, even for :class:`~lightning.pytorch.Callback`'s
empty defaults. A training step calls six such hooks, so every callback costs the trainer's thread
about 10 to 20 microseconds per step on a 2-core CPU whether or not it does anything: a fifth of
the 0.1 ms that issue 11 allows AsyncSAM per step (see ``benchmarks/overhead.py``).

The dispatch skips a hook that is not callable (``if callable(fn)`` in that function), so a
callback whose per-batch hooks are ``None`` costs nothing per batch. The strategies' callbacks
carry state through checkpoints and bracket a fit; their per-step work runs inside the strategy's
own ``training_step`` and ``optimizer_step``, which Lightning calls anyway. ``tests/test_batch_free.py``
fails if a Lightning release stops honouring this.
"""

from __future__ import annotations

from lightning.pytorch import Callback

PER_BATCH_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_zero_grad",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)


class BatchFreeCallback(Callback):
    """A :class:`~lightning.pytorch.Callback` without per-batch hooks: Lightning's dispatch skips it on every batch.

    The epoch, fit and checkpoint hooks (``setup``, ``on_train_start``, ``state_dict``...) work as
    usual. A subclass that needs a per-batch hook defines it as a method again.

    Example::

        >>> class Marks(BatchFreeCallback):
        ...     def on_train_start(self, trainer, pl_module):
        ...         print("started")
        >>> Marks().on_train_batch_end is None
        True
    """

    # None, not a method: see the module's docstring. Assigned in the loop below.


for _hook in PER_BATCH_HOOKS:
    setattr(BatchFreeCallback, _hook, None)
del _hook

__all__ = ["PER_BATCH_HOOKS", "BatchFreeCallback"]
