"""``manifest.json``: what each stage did, with what, and how long it took.

The manifest records the resolved config, library versions, and for each stage: status,
fingerprint (config sections + input digests), output hashes, counts, per-item status, errors,
wall time and peak memory. It is rewritten atomically after every stage. ``errors.csv`` is
regenerated from it, so it always lists the errors of the latest run of every stage.
"""

from __future__ import annotations

import csv
import functools
import io as _text
import json
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from pipeline.core import io
from pipeline.core.artifacts import ARTIFACTS

MANIFEST = ARTIFACTS["manifest"].pattern
ERRORS_CSV = ARTIFACTS["errors"].pattern
# the per-item tables the runner writes from the manifest: file → (the stage record's key, column name)
ITEM_TABLES = {ERRORS_CSV: ("errors", "error"), ARTIFACTS["ignored"].pattern: ("ignored", "reason"),
               ARTIFACTS["warnings"].pattern: ("warnings", "warning")}
LIBRARIES = ("torch", "monai", "numpy", "SimpleITK", "pydicom", "nibabel", "scikit-learn", "scikit-image", "pandas", "scipy", "PyYAML", "matplotlib")


def library_versions() -> dict[str, str]:
    """Versions of Python, the platform and the libraries that shape results (a copy: callers may edit it)."""
    return dict(_library_versions())


@functools.cache
def _library_versions() -> dict[str, str]:
    # read once per process: each lookup parses a package's metadata (≈ 1 ms; a resumed benchmark
    # fingerprints hundreds of stages), and what is installed does not change under a running process
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for lib in ("medanomaly",) + LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = "not installed"
    return versions


# Fields that differ between two runs of the same config (clock, machine load); everything else
# in the manifest is a function of the config, the inputs and the code.
VOLATILE = frozenset({"created", "updated", "started", "finished", "last_skipped", "wall_time_s", "peak_rss_mb", "train_seconds"})


def stable_view(obj):
    """The manifest without its :data:`VOLATILE` fields (for the report and for comparing runs)."""
    if isinstance(obj, dict):
        return {k: stable_view(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [stable_view(v) for v in obj]
    return obj


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """In-memory manifest bound to a run directory; :meth:`save` writes it atomically."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / MANIFEST
        self.run_dir = run_dir
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {"created": now(), "stages": {}}

    @property
    def stages(self) -> dict:
        return self.data.setdefault("stages", {})

    def failed_items(self, stage: str) -> list[str]:
        """The items of ``stage``'s last run that failed (its ``errors.csv`` lines), e.g. ``series <uid>``."""
        return [item for item, _ in self.stages.get(stage, {}).get("errors", [])]

    def save(self) -> None:
        self.data["updated"] = now()
        io.write_json(self.path, self.data)
        self.write_item_tables()

    def write_item_tables(self) -> None:
        """``errors.csv``, ``ignored.csv`` and ``warnings.csv`` (the csv module: the runner stays free of pandas)."""
        for name, (key, column) in ITEM_TABLES.items():
            buf = _text.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(["stage", "item", column])
            writer.writerows([stage, item, msg] for stage, st in self.stages.items() for item, msg in st.get(key, []))
            io.write_text(self.run_dir / name, buf.getvalue())
