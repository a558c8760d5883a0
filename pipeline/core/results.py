"""What a stage returns to the runner: counts, per-item errors and per-item status."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageResult:
    """Summary of one stage run, recorded in ``manifest.json`` and ``errors.csv``."""

    counts: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (item, one-line message)
    items: dict[str, str] = field(default_factory=dict)  # item → "ok" | "failed"
    outputs: list[Path] = field(default_factory=list)  # files written (hashed into the manifest)
    extra: dict = field(default_factory=dict)

    def fail(self, item: str, message: str) -> None:
        self.errors.append((item, message))
        self.items[item] = "failed"

    def ok(self, item: str) -> None:
        self.items[item] = "ok"
