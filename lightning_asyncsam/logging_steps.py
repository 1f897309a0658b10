"""When a step's diagnostics reach the loggers: shared by the strategies and the AsyncSAM callback."""

from __future__ import annotations

import lightning.pytorch as pl


def logs_now(trainer: "pl.Trainer") -> bool:
    """Whether this step's diagnostics reach the loggers.

    Lightning's ``log`` is not free, nor is a diagnostic that needs a pass over the gradients or a
    host sync; on short steps neither is negligible. Loggers only receive values every
    ``log_every_n_steps`` anyway, so diagnostics are computed and logged exactly then (every step
    with ``log_every_n_steps=1``), and at the end of each epoch so that
    ``trainer.callback_metrics`` always holds recent values.

    Example::

        >>> import lightning as L
        >>> logs_now(L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False))
        True
    """
    last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
    return bool(trainer._logger_connector.should_update_logs or last or trainer.fast_dev_run)


__all__ = ["logs_now"]
