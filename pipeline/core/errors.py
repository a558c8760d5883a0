"""Exception families. Each message names the input and, where there is one, the remedy.

The CLI prints ``str(error)`` as one line (no traceback unless ``--debug``); stages catch
:class:`ItemError` per item, record it in ``errors.csv`` and go on with the other items.
"""

from __future__ import annotations


class MedAnomalyError(Exception):
    """Base class: an expected failure with a message meant for the user."""


class ConfigError(MedAnomalyError):
    """The config file is missing, malformed, or fails schema validation."""


class StageError(MedAnomalyError):
    """A whole stage cannot run (e.g. a required upstream output is missing).

    ``item_errors`` carries the per-item ``(item, message)`` errors found before the stage gave
    up (e.g. every file of the input was unreadable), so they still reach ``errors.csv``;
    ``ignored`` and ``warnings`` likewise reach ``ignored.csv`` and ``warnings.csv``.
    """

    def __init__(self, message: str, item_errors: list[tuple[str, str]] | None = None,
                 ignored: list[tuple[str, str]] | None = None, warnings: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.item_errors = list(item_errors or [])
        self.ignored = list(ignored or [])
        self.warnings = list(warnings or [])


class ItemError(MedAnomalyError):
    """One item (a series, a nodule, a sample) failed; the others go on."""


class InvalidSeriesError(ItemError):
    """A DICOM series fails validation (orientation, spacing, missing slices, ...)."""


class DicomReadError(ItemError):
    """A file could not be read as DICOM."""


class ExtractionError(ItemError):
    """A nodule cube cannot be cut (unknown series, centre outside the volume, ...)."""
