"""Placeholder: filled in by the detectors work (issue 3)."""
