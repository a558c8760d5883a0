"""What a stage returns to the runner: counts, per-item errors and per-item status."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageResult:
    """Summary of one stage run, recorded in ``manifest.json``, ``errors.csv``, ``ignored.csv`` and ``warnings.csv``.

    Only ``errors`` make the exit code 1. ``notes`` are printed as ``note:`` lines: one per kind of
    thing worth knowing (e.g. "63 files are not images"), not one per item.
    """

    counts: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (item, one-line message)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (item, reason): plainly not an input, left out
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (item, library warning raised while reading it)
    notes: list[str] = field(default_factory=list)  # one-line summaries for the user
    items: dict[str, str] = field(default_factory=dict)  # item → "ok" | "failed"
    outputs: list[Path] = field(default_factory=list)  # files written (hashed into the manifest)
    extra: dict = field(default_factory=dict)

    def fail(self, item: str, message: str) -> None:
        self.errors.append((item, message))
        self.items[item] = "failed"

    def ok(self, item: str) -> None:
        self.items[item] = "ok"

    def ignore(self, items: list[tuple[str, str]], where: str, what: str = "are not images") -> None:
        """Record ``(item, reason)`` pairs left out on purpose, with one summary note naming an example."""
        if items:
            self.ignored += items
            self.notes.append(f"{len(items)} file(s) under {where} {what} and were ignored (e.g. {items[0][1]}); listed in ignored.csv")
