"""The paper's experiments as Hydra configs (the ``recipe`` group of ``lightning_asyncsam.conf``).

One YAML file per row of Table A.1, plus ``digits``, the default, which runs anywhere; README.md
gives each recipe's command, the paper's numbers and ours.
"""
