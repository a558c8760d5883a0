"""Map a function over independent items (series, nodule groups) with per-item error capture.

The default engine (``run.engine: local``) runs items in the current process (``workers: 1``) or
in a local process pool of ``workers`` processes; ``run.engine: ray`` runs the same functions as
Ray tasks (:mod:`pipeline.core.ray_engine`). Items are independent, so results are the same either way.
An item that raises never stops the others: its exception becomes an ``(item, message)`` error,
except a full or read-only output file system (:data:`pipeline.core.io.FATAL_ERRNOS`), which stops the run.
:class:`~pipeline.core.errors.ItemError` messages are shown as they are; an unexpected exception is
reported with its type so a bug is still visible without a traceback.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterable, Iterator

import SimpleITK as sitk
from tqdm import tqdm

from pipeline.core.errors import MedAnomalyError
from pipeline.core.io import FATAL_ERRNOS
from pipeline.core.ray_engine import map_tasks


def _call(fn: Callable, item: Any) -> tuple[bool, Any]:
    try:
        return True, fn(item)
    except MedAnomalyError as exc:
        return False, str(exc)
    except OSError as exc:
        if exc.errno in FATAL_ERRNOS:  # full or read-only output: stop the run, it is not this item's fault
            raise
        return False, f"unexpected {type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - one bad item must not stop the batch
        return False, f"unexpected {type(exc).__name__}: {exc}"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container or ``taskset`` limit), not
    all the cores of the host that ``os.cpu_count`` counts."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def _share_cores(workers: int) -> None:
    """Pool initializer: each of ``workers`` processes gets its share of the usable cores for the
    multi-threaded libraries (SimpleITK filters, torch), so 2 workers on 2 cores do not run 4
    threads that wait on each other."""
    n = max(1, usable_cores() // workers)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    if "torch" in sys.modules:  # only if the parent already loaded it: importing torch costs ~1 s per worker
        sys.modules["torch"].set_num_threads(n)


def map_items(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 1, desc: str = "", key: Callable[[Any], str] = str,
              engine: str = "local") -> Iterator[tuple[str, bool, Any]]:
    """Yield ``(item key, ok, result-or-message)`` for every item, in input order for workers=1.

    ``fn`` must be a picklable top-level function when ``workers > 1`` or ``engine == "ray"``.
    Memory stays bounded by the workers: each holds one item's data at a time (a series'
    volume), and only its results come back (table rows; for extract, that series' cubes).
    """
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit="item", leave=False, disable=None)
    try:
        if engine == "ray":
            for i, ok, res in map_tasks(_call, fn, items):
                bar.update()
                yield key(items[i]), ok, res
            return
        if workers <= 1 or len(items) <= 1:
            for item in items:
                ok, res = _call(fn, item)
                bar.update()
                yield key(item), ok, res
            return
        with ProcessPoolExecutor(max_workers=workers, initializer=_share_cores, initargs=(workers,)) as pool:
            futures = {pool.submit(_call, fn, item): item for item in items}
            for fut in as_completed(futures):
                ok, res = fut.result()
                bar.update()
                yield key(futures[fut]), ok, res
    finally:
        bar.close()
