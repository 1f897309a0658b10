"""The recipes app: datasets, networks, the LightningModule, ``asyncsam-train`` and ``asyncsam-report``.

It uses the package as any user would (``Trainer(strategy=...)``); nothing below it imports it.
"""
