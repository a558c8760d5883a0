"""Stage declarations: what a stage reads, what it needs upstream, what it writes.

Every stage module exports ``STAGE = Stage(...)`` beside its ``run(cfg, run_dir)``. The runner
and the CLI iterate over these declarations; nothing else knows a stage by its name:

- ``reads``: config sections (``"train"``) or single keys (``"run.seed"``) whose values go into
  the stage's fingerprint, so changing them reruns it;
- ``after``: upstream stages whose outputs it reads (their output hashes go into the fingerprint);
  ``unless`` drops upstream stages for a config (scoring with an external model needs no train);
- ``inputs``: config keys of external inputs (files or folders outside the run directory) that the
  stage reads; :func:`pipeline.core.inputs.external_inputs` resolves and digests them;
- ``outputs``: names of the artifacts it writes (:data:`pipeline.core.artifacts.ARTIFACTS`);
- ``learns``: the stage fits a model; ``pipeline score --model`` runs every stage that does not.

A stage module is kept light: its ``run`` imports the module that does the work (torch, MONAI,
scikit-learn, SimpleITK), so that ``pipeline validate`` and ``pipeline ingest`` do not import
the libraries of the other stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pipeline.core.results import StageResult
    from pipeline.core.schema import Config


@dataclass(frozen=True)
class Stage:
    """The declaration of one pipeline stage (see the module docstring)."""

    name: str
    run: Callable[["Config", Path], "StageResult"]
    reads: tuple[str, ...]
    after: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    unless: Callable[["Config"], tuple[str, ...]] | None = None  # upstream stages this config does not need
    learns: bool = False  # fits a model on the training split (skipped when new data are scored with a trained model)
    help: str = ""

    def upstream(self, cfg: "Config") -> tuple[str, ...]:
        """The stages this stage needs for ``cfg``."""
        skip = self.unless(cfg) if self.unless else ()
        return tuple(s for s in self.after if s not in skip)
