"""Hydra configs of ``asyncsam-train``, shipped as the package ``lightning_asyncsam.conf``.

Found by Hydra as ``pkg://lightning_asyncsam.conf`` from a source checkout (``pip install -e .``)
and from an installed wheel alike; the recipes in ``recipes/`` are its subpackage ``recipe``.
"""
