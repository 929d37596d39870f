"""layerdrift: how fine-tuning changes a transformer, layer by layer.

This package holds what every layer shares: the run configuration and the process
environment. The stages live in ``tasks/``, the on-disk formats in ``storage/`` and the
Prefect flows and command line in ``flows/``.
"""

__version__ = "0.1.0"
