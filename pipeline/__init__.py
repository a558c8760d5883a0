"""medanomaly pipeline: CLI, config schema, stage runner, run directory and manifest."""

__version__ = "0.1.0"
