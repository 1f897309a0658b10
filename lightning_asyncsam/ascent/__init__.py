"""The ascent side of AsyncSAM: the worker process, its shared buffers, and the callback that drives it.

Nothing here imports :mod:`lightning_asyncsam.strategies`: the strategies build on these modules.
"""
