"""Stage runner: ``ingest → extract → split → train → score → evaluate`` over one run directory.

Each stage is a plain function ``run(cfg, run_dir) -> StageResult``. Before running a stage the
runner computes its fingerprint from (a) the config sections the stage reads, (b) the output
hashes of the stages it depends on, and (c) a digest of external inputs (file paths, sizes and
modification times of the DICOM tree; the content hash of the nodule table). A stage whose
fingerprint matches a finished run and whose recorded outputs are intact (same SHA-256) is
skipped, so re-running a killed or finished run only redoes what changed.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline import io
from pipeline.config import Config
from pipeline.errors import MedAnomalyError, StageError
from pipeline.manifest import Manifest, library_versions, now
from pipeline.results import StageResult


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # module holding ``run(cfg, run_dir)``
    config: tuple[str, ...]  # config sections (or "run.seed") in the fingerprint
    after: tuple[str, ...]  # stages whose outputs this stage reads

    def function(self) -> Callable[[Config, Path], StageResult]:
        import importlib

        return importlib.import_module(self.module).run


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "preprocessing.ingest", ("ingest",), ()),
    Stage("extract", "preprocessing.extract", ("extract", "run.seed"), ("ingest",)),
    Stage("split", "preprocessing.splits", ("split", "run.seed"), ("extract",)),
    Stage("train", "models.train", ("model", "train", "extract", "run.seed", "run.device"), ("extract", "split")),  # extract: its normalisation is fitted here
    Stage("score", "models.score", ("score", "run.seed", "evaluate.score"), ("train", "extract", "split")),
    Stage("evaluate", "evaluation.evaluate", ("evaluate", "run.seed"), ("score", "extract", "ingest")),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def tree_digest(root: Path) -> str:
    """Digest of a folder tree (or of one file) from relative paths, sizes and mtimes (cheap for large archives)."""
    if root.is_file():  # e.g. an .npz array dataset: os.walk would see nothing and miss a changed file
        st = root.stat()
        return io.sha256_json([(root.name, st.st_size, st.st_mtime_ns)])
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:  # a dangling link: ingest reports it; digest the link itself
                st = p.lstat()
            entries.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return io.sha256_json(entries)


def external_inputs(stage: Stage, cfg: Config) -> dict[str, str]:
    if stage.name == "ingest":
        out = {str(cfg.ingest.input): tree_digest(cfg.ingest.input) if cfg.ingest.input.exists() else "missing"}
        if cfg.ingest.format == "images":
            from preprocessing.labels import labels_path

            p = labels_path(cfg)
            out[str(p)] = io.sha256_file(p) if p.is_file() else "missing"
        return out
    if stage.name == "extract" and cfg.ingest.format == "dicom":
        p = cfg.extract.nodules
        return {str(p): io.sha256_file(p) if p.exists() else "missing"}
    if stage.name == "score" and cfg.score.model is not None:
        from models.score import model_path

        p = model_path(cfg, Path("."))
        return {str(p): io.sha256_file(p) if p.exists() else "missing"}
    return {}


def dependencies(stage: Stage, cfg: Config) -> tuple[str, ...]:
    """Upstream stages; scoring with an external model (``score.model``) does not need ``train``."""
    if stage.name == "score" and cfg.score.model is not None:
        return tuple(d for d in stage.after if d != "train")
    return stage.after


def _config_value(cfg: Config, key: str):
    if "." in key:
        section, attr = key.split(".", 1)
        return getattr(getattr(cfg, section), attr)
    return cfg.section(key)


def fingerprint(stage: Stage, cfg: Config, manifest: Manifest) -> tuple[str, dict]:
    deps = {}
    for dep in dependencies(stage, cfg):
        st = manifest.stages.get(dep, {})
        if st.get("status") != "done":
            raise StageError(f"stage {stage.name} needs stage {dep} to have finished; run `pipeline {dep}` or `pipeline run` first")
        deps[dep] = st.get("outputs", {})
    inputs = {"config": {k: _config_value(cfg, k) for k in stage.config}, "upstream": deps, "external": external_inputs(stage, cfg), "code": library_versions().get("medanomaly")}
    return io.sha256_json(inputs), inputs


def outputs_intact(run_dir: Path, outputs: dict[str, str]) -> bool:
    return all((run_dir / rel).exists() and io.sha256_file(run_dir / rel) == digest for rel, digest in outputs.items())


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children (MiB, Linux ru_maxrss in KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def run_stages(cfg: Config, run_dir: Path, names: list[str], force: bool = False, log: Callable[[str], None] = print) -> Manifest:
    """Run the named stages in pipeline order; returns the manifest. Raises on a stage failure."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = io.remove_stale_temps(run_dir)
    if stale:
        log(f"removed {len(stale)} temporary file(s) left by an interrupted run")
    manifest = Manifest(run_dir)
    manifest.data["config_file"] = str(cfg.source) if cfg.source else None
    manifest.data["config"] = cfg.to_dict()
    manifest.data["versions"] = library_versions()
    io.write_text(run_dir / "config.yaml", _yaml(cfg.to_dict()))
    for stage in STAGES:
        if stage.name not in names:
            continue
        fp, inputs = fingerprint(stage, cfg, manifest)
        prev = manifest.stages.get(stage.name, {})
        if not force and prev.get("status") == "done" and prev.get("fingerprint") == fp and outputs_intact(run_dir, prev.get("outputs", {})):
            log(f"[{stage.name}] up to date, skipped (finished {prev.get('finished')})")
            prev["last_skipped"] = now()
            manifest.save()
            continue
        manifest.stages[stage.name] = {"status": "running", "started": now(), "fingerprint": fp, "inputs": inputs}
        manifest.save()
        log(f"[{stage.name}] running")
        t0 = time.perf_counter()
        try:
            result = stage.function()(cfg, run_dir)
        except MedAnomalyError as exc:
            errors = [*getattr(exc, "item_errors", []), (stage.name, str(exc))]
            manifest.stages[stage.name].update(status="failed", finished=now(), wall_time_s=round(time.perf_counter() - t0, 3), errors=errors)
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
            **({"details": result.extra} if result.extra else {}),
        }
        manifest.stages[stage.name] = record
        manifest.save()
        counts = ", ".join(f"{k}={v}" for k, v in result.counts.items())
        log(f"[{stage.name}] done in {record['wall_time_s']:.1f} s ({counts}); {len(result.errors)} error(s)")
    return manifest


def _yaml(obj: dict) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)
