"""Stage runner: ``ingest → extract → split → train → score → evaluate`` over one run directory.

The stages are the ``STAGE`` declarations of their modules (:class:`pipeline.core.stage.Stage`),
in pipeline order. Before running a stage the runner computes its fingerprint from (a) the config
sections it ``reads``, (b) the output hashes of the stages it needs (``upstream``), and (c) a
digest of its external ``inputs`` (:mod:`pipeline.core.inputs`). A stage whose fingerprint
matches a finished run and whose recorded outputs are intact (same SHA-256) is skipped, so
re-running a killed or finished run only redoes what changed.

A run holds the run directory's lock (:mod:`pipeline.core.lock`) and confines every write to the
run directory (:func:`pipeline.core.io.confine`).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Callable

import yaml

from pipeline.core import artifacts, io
from pipeline.core.errors import MedAnomalyError, StageError
from pipeline.core.inputs import external_inputs
from pipeline.core.lock import run_lock
from pipeline.core.manifest import Manifest, library_versions, now
from pipeline.core.memory import fix_mmap_threshold
from pipeline.core.schema import Config
from pipeline.core.stage import Stage
from pipeline.stages import evaluate, extract, ingest, map_, score, split, train

STAGES: tuple[Stage, ...] = (ingest.STAGE, extract.STAGE, split.STAGE, train.STAGE, score.STAGE, map_.STAGE, evaluate.STAGE)
STAGE_NAMES = tuple(s.name for s in STAGES)
BY_NAME = {s.name: s for s in STAGES}


def contract_markdown() -> str:
    """The stage declarations and the run-directory contract as markdown tables (``pipeline stages``; docs/ARCHITECTURE.md)."""
    lines = ["| stage | module | reads (config) | after | external inputs | writes |", "|---|---|---|---|---|---|"]
    for s in STAGES:
        q = lambda items: ", ".join(f"`{i}`" for i in items) or "–"  # noqa: E731
        lines.append(f"| `{s.name}` | `{s.run.__module__}` | {q(s.reads)} | {', '.join(s.after) or '–'} | {q(s.inputs)} | {', '.join(s.outputs)} |")
    lines += ["", "| artifact | path | written by | what it holds |", "|---|---|---|---|"]
    lines += [f"| `{a.name}` | `{a.pattern}` | {a.stage} | {a.doc} |" for a in artifacts.ARTIFACTS.values()]
    lines += [f"| `{a.name}` | `model/{a.pattern}` | {a.stage} | {a.doc} |" for a in artifacts.MODEL_FILES.values()]
    return "\n".join(lines)


def _config_value(cfg: Config, key: str):
    if "." in key:
        section, attr = key.split(".", 1)
        return getattr(getattr(cfg, section), attr)
    return cfg.section(key)


def fingerprint(stage: Stage, cfg: Config, manifest: Manifest) -> tuple[str, dict]:
    """The stage's fingerprint and what it is made of (config values, upstream output hashes, input digests, code version)."""
    deps = {}
    for dep in stage.upstream(cfg):
        st = manifest.stages.get(dep, {})
        if st.get("status") != "done":
            raise StageError(f"stage {stage.name} needs stage {dep} to have finished; run `pipeline {dep}` or `pipeline run` first")
        deps[dep] = st.get("outputs", {})
    inputs = {"config": {k: _config_value(cfg, k) for k in stage.reads}, "upstream": deps,
              "external": external_inputs(cfg, stage.inputs), "code": library_versions().get("medanomaly")}
    return io.sha256_json(inputs), inputs


def outputs_intact(run_dir: Path, outputs: dict[str, str]) -> bool:
    return all((run_dir / rel).exists() and io.sha256_file(run_dir / rel) == digest for rel, digest in outputs.items())


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children (MiB, Linux ru_maxrss in KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def run_stages(cfg: Config, run_dir: Path, names: list[str], force: bool = False, log: Callable[[str], None] = print) -> Manifest:
    """Run the named stages in pipeline order; returns the manifest. Raises on a stage failure.

    Holds ``run_dir``'s lock for the whole call (a second process gets :class:`RunLockedError`),
    and confines every write to ``run_dir``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fix_mmap_threshold()  # batch buffers go back to the system when freed: flat peaks (pipeline/core/memory.py)
    with run_lock(run_dir, log), io.confine(run_dir):
        stale = io.remove_stale_temps(run_dir)
        if stale:
            log(f"removed {len(stale)} temporary file(s) left by an interrupted run")
        manifest = Manifest(run_dir)
        manifest.data["config_file"] = str(cfg.source) if cfg.source else None
        manifest.data["config"] = cfg.to_dict()
        manifest.data["versions"] = library_versions()
        io.write_text(artifacts.path("config", run_dir), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        for stage in STAGES:
            if stage.name in names:
                _run_one(stage, cfg, run_dir, manifest, force, log)
    return manifest


def _run_one(stage: Stage, cfg: Config, run_dir: Path, manifest: Manifest, force: bool, log: Callable[[str], None]) -> None:
    """Run (or skip, when up to date) one stage and record it in the manifest."""
    fp, inputs = fingerprint(stage, cfg, manifest)
    prev = manifest.stages.get(stage.name, {})
    if not force and prev.get("status") == "done" and prev.get("fingerprint") == fp and outputs_intact(run_dir, prev.get("outputs", {})):
        log(f"[{stage.name}] up to date, skipped (finished {prev.get('finished')})")
        prev["last_skipped"] = now()
        manifest.save()
        return
    manifest.stages[stage.name] = {"status": "running", "started": now(), "fingerprint": fp, "inputs": inputs}
    manifest.save()
    log(f"[{stage.name}] running")
    t0 = time.perf_counter()
    try:
        result = stage.run(cfg, run_dir)
    except MedAnomalyError as exc:
        errors = [*getattr(exc, "item_errors", []), (stage.name, str(exc))]
        kept = {k: v for k in ("ignored", "warnings") if (v := getattr(exc, k, None))}
        manifest.stages[stage.name].update(status="failed", finished=now(), wall_time_s=round(time.perf_counter() - t0, 3), errors=errors, **kept)
        manifest.save()
        raise
    record = {
        "status": "done",
        "started": manifest.stages[stage.name]["started"],
        "finished": now(),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "fingerprint": fp,
        "inputs": inputs,
        "outputs": {str(p.relative_to(run_dir)): io.sha256_file(p) for p in result.outputs},
        "counts": result.counts,
        "items": result.items,
        "errors": result.errors,
        **{k: v for k, v in (("ignored", result.ignored), ("warnings", result.warnings), ("notes", result.notes)) if v},
        **({"details": result.extra} if result.extra else {}),
    }
    manifest.stages[stage.name] = record
    manifest.save()
    for note in result.notes:
        log(f"note: {note}")
    if result.warnings:
        log(f"note: {len(result.warnings)} library warning(s) while reading {len({i for i, _ in result.warnings})} input(s); see warnings.csv")
    counts = ", ".join(f"{k}={v}" for k, v in result.counts.items())
    log(f"[{stage.name}] done in {record['wall_time_s']:.1f} s ({counts}); {len(result.errors)} error(s)")
