"""The Ray engine (``run.engine: ray``): the same per-item functions as Ray tasks.

Ray is an optional dependency (``pip install medanomaly[ray]``). The cluster is Ray's business:
when this process has already called ``ray.init`` (e.g. a test, a notebook) that instance is
used; otherwise ``ray.init()`` connects to ``RAY_ADDRESS`` when it is set (``auto``, or
``ray://head:10001``) and else starts a local instance bound to the loopback address. Every task asks for one CPU, so Ray runs
as many items at once as the cluster has cores. Item functions and items must be picklable and
the workers must be able to import this package (install it on every node).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

from pipeline.core.errors import ConfigError

RAY_MISSING = "run.engine: ray needs Ray, which is not installed; install it with: pip install medanomaly[ray]"


def require_ray():
    """Import Ray or raise one clear :class:`ConfigError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def init_ray():
    """The running Ray instance: the one this process joined, else ``ray.init()`` (RAY_ADDRESS or local)."""
    ray = require_ray()
    if not ray.is_initialized():
        local = {} if os.environ.get("RAY_ADDRESS") else {"_node_ip_address": "127.0.0.1"}
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False, **local)
    return ray


def map_tasks(call: Callable[[Callable, Any], tuple[bool, Any]], fn: Callable, items: list) -> Iterator[tuple[int, bool, Any]]:
    """Run ``call(fn, item)`` as one Ray task per item; yield ``(index, ok, result)`` as tasks finish.

    A task whose worker dies (crash, out of memory) becomes a failed item, not a failed batch.
    """
    ray = init_ray()
    task = ray.remote(num_cpus=1, max_retries=0)(call)
    fn_ref = ray.put(fn)
    index = {task.remote(fn_ref, item): i for i, item in enumerate(items)}
    pending = list(index)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ref = done[0]
        try:
            ok, res = ray.get(ref)
        except ray.exceptions.RayError as exc:
            ok, res = False, f"ray task failed ({type(exc).__name__}): {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        yield index[ref], ok, res
