"""Sentio: nightly-retrained PPO agents for leveraged Nasdaq ETFs.

The ``sentio`` package is the domain library. It never imports Prefect: orchestration
lives in the top-level ``tasks`` and ``flows`` packages.
"""

__version__ = "0.1.0"
