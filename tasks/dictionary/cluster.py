"""Training dictionaries as tasks on a Dask cluster.

Each call runs a plain function of the stages (``train_sae_for_run``,
``train_crosscoder_for_run``) on a worker: it opens the store and writes its folder by URL,
so the run directory must be reachable from the workers (object storage or a shared disk),
and it trains on the worker's own device (``device = "auto"`` picks a worker's GPU).
Seeds, data order and the resumable state live in the run directory, so a dictionary
trained on a worker equals one trained in the flow process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)


def map_on_cluster(
    address: str, function: Callable[..., Any], calls: Sequence[tuple[Any, ...]]
) -> list[Any]:
    """``function(*args)`` for every ``args`` in ``calls``, one Dask task each, on the
    scheduler at ``address``; the results in the order of ``calls``."""
    from distributed import Client

    with Client(address) as client:
        logger.info("%d %s tasks on %s", len(calls), function.__name__, address)
        futures = [client.submit(function, *args, pure=False) for args in calls]
        return client.gather(futures)
