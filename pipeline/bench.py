"""``pipeline bench``: run benchmark protocols through the normal stage runner and publish tables.

A protocol is an ordinary pipeline config (``configs/bench/*.yaml``) with a ``bench`` section that
lists detectors (config overrides), how the run is repeated (seeds, or the folds of a grouped
k-fold split), an optional sweep (e.g. ``split.contamination``), the figures the source studies
reported, and the overrides of ``--quick``. Every (detector, sweep value, repeat) is one
``run_stages`` call in its own run directory, so a benchmark run is exactly a ``pipeline run``,
and a killed benchmark resumes: finished runs are skipped by the runner.

Data stages are shared: for each repeat (and sweep value) the ``ingest``/``extract``/``split``
stages run once into ``_data/``, and their outputs are hard-linked into every detector's run
together with their manifest records; the runner still checks fingerprints and output hashes and
redoes a stage whose config differs (a detector that changes the data sections).

Each run goes to a fresh child process (all protocols share one queue), so its peak memory is its own. Results go
to ``<out>/bench/<protocol>.json`` (one file per protocol, with the command line and git commit),
then ``<out>/BENCHMARKS.md`` is rebuilt from every protocol file found there, with ROC curves and
score densities as ``<out>/bench/<protocol>_roc.png`` and ``_density.png``.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import yaml

from evaluation.bench_report import carry_over, git_commit, plot_protocol, slug, summarise, write_markdown
from models.catalog import MODELS
from pipeline.core import artifacts, io
from pipeline.core.config import resolve_config_path, set_dotted, validate
from pipeline.core.errors import ConfigError, StageError
from pipeline.core.lock import run_lock
from pipeline.core.manifest import Manifest
from pipeline.core.schema import BenchConfig, BenchDetector, Config
from pipeline.runner import STAGE_NAMES, run_stages

DATA_STAGES = ("ingest", "extract", "split")
@dataclass
class RunSpec:
    """One pipeline run of a protocol."""

    detector: str  # BenchDetector label
    sweep: float | None
    repeat: int
    raw: dict  # the validated-to-be raw config
    base_dir: Path  # relative paths of ``raw`` resolve here (the protocol config's folder)
    source: Path  # the protocol config
    run_dir: Path
    data_dir: Path  # where this repeat's shared data stages live (the first detector's run)


def load_protocol(path: Path, data_root: Path | None, quick: bool) -> tuple[dict, Config]:
    """The protocol's raw mapping (data paths rebased on ``data_root``, quick overrides applied) and its validated config."""
    path, _ = resolve_config_path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    cfg = validate(copy.deepcopy(raw), base_dir=path.parent, source=path, models=MODELS)
    if not cfg.bench.detectors:
        raise ConfigError(f"{path}: bench.detectors is empty; this is not a benchmark protocol")
    for key, rel in cfg.bench.data.items():
        if data_root is not None:
            set_dotted(raw, key.split("."), str((data_root / rel).resolve()))
    raw["_base_dir"] = str(path.parent)
    return raw, cfg


def variant(raw: dict, det: BenchDetector, bench: BenchConfig, quick: bool, repeat: int, sweep: float | None) -> dict:
    """Raw config of one run: protocol ← detector overrides ← quick overrides (protocol's, then the
    detector's) ← repeat ← sweep value."""
    out = {k: copy.deepcopy(v) for k, v in raw.items() if k not in ("bench", "_base_dir")}
    if "model.name" in det.set and det.set["model.name"] != out.get("model", {}).get("name"):
        out["model"] = {}  # another model: the protocol's model parameters belong to its own model
        if "evaluate.score" not in det.set:  # and the protocol's primary score to it: unset → the model's first score
            out.get("evaluate", {}).pop("score", None)
    layers = [det.set] + ([bench.quick, det.quick_set] if quick else [])
    for layer in layers:
        for key, value in layer.items():
            set_dotted(out, key.split("."), copy.deepcopy(value))
    if bench.repeat == "folds":
        set_dotted(out, ["split", "method"], "kfold")
        set_dotted(out, ["split", "fold"], repeat)
    else:
        set_dotted(out, ["run", "seed"], repeat)
    if sweep is not None and bench.sweep_key:
        set_dotted(out, bench.sweep_key.split("."), sweep)
    out.setdefault("evaluate", {}).update(overlays=False, figures=False)  # the benchmark draws its own figures
    out["run"].pop("out", None) if isinstance(out.get("run"), dict) else None
    return out


def plan(path: Path, data_root: Path | None, runs_root: Path, quick: bool, only: list[str] | None = None,
         repeats: int | None = None) -> tuple[Config, list[RunSpec]]:
    """Every run of a protocol, each config validated up front (a typo fails before hours of training)."""
    raw, cfg = load_protocol(path, data_root, quick)
    bench = cfg.bench
    base_dir = Path(raw["_base_dir"])
    n_rep = bench.quick_repeats if quick else bench.repeats
    n_rep = min(n_rep, repeats) if repeats else n_rep
    sweeps: list[float | None] = list(bench.sweep_values) if bench.sweep_key else [None]
    dets = [d for d in bench.detectors if (d.quick or not quick) and (not only or d.label in only)]
    specs = []
    proto_dir = runs_root / slug(bench.protocol or path.stem)
    for sweep in sweeps:
        for rep in range(n_rep):
            data_dir = None
            for det in dets:
                r = variant(raw, det, bench, quick, rep, sweep)
                try:
                    validate(copy.deepcopy(r), base_dir=base_dir, source=path, models=MODELS)
                except ConfigError as exc:
                    raise ConfigError(f"{path}: detector {det.label!r}: {exc}") from None
                tail = Path(f"{bench.sweep_key.split('.')[-1]}_{sweep:g}" if sweep is not None else "") / f"{bench.repeat[:-1]}{rep}"
                sub = proto_dir / slug(det.label) / tail
                data_dir = data_dir or proto_dir / "_data" / tail
                specs.append(RunSpec(det.label, sweep, rep, r, base_dir, path, sub, data_dir))
    return cfg, specs


def share_data_stages(spec: RunSpec) -> None:
    """Hard-link the data-stage outputs of ``spec.data_dir`` into ``spec.run_dir`` with their manifest records."""
    if spec.data_dir == spec.run_dir or not artifacts.path("manifest", spec.data_dir).exists() or artifacts.path("manifest", spec.run_dir).exists():
        return
    src = Manifest(spec.data_dir)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    dst = Manifest(spec.run_dir)
    for stage in DATA_STAGES:
        rec = src.stages.get(stage)
        if not rec or rec.get("status") != "done":
            break
        for rel in rec.get("outputs", {}):
            target = spec.run_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(spec.data_dir / rel, target)
        dst.stages[stage] = copy.deepcopy(rec)
    dst.save()


def prepare_data(specs: list[RunSpec]) -> None:
    """Run the data stages once per (sweep value, repeat) into its ``_data`` folder, with the first
    detector's config (the stages' fingerprints cover only the data sections, so they are shared)."""
    done = set()
    for spec in specs:
        if spec.data_dir in done:
            continue
        done.add(spec.data_dir)
        cfg = validate(copy.deepcopy(spec.raw), base_dir=spec.base_dir, source=spec.source, models=MODELS)
        run_stages(cfg, spec.data_dir, list(DATA_STAGES), force=_outdated(spec.data_dir), log=lambda m: None)


def _outdated(data_dir: Path) -> bool:
    """A shared data folder extracted before cubes were sharded: its fingerprints still match, but
    a new detector's run could not read its cubes, so its data stages are redone. (Runs that were
    finished from it keep their own linked copy and manifest, and stay finished.)"""
    if not artifacts.path("samples", data_dir).exists():
        return False
    try:
        artifacts.check_shard_columns(artifacts.read_samples(data_dir), data_dir)
    except StageError:
        return True
    return False


def _tag(spec: RunSpec) -> str:
    return f"{spec.detector} | {('sweep ' + format(spec.sweep, 'g') + ' | ') if spec.sweep is not None else ''}repeat {spec.repeat}"


def _run_specs(specs: list[RunSpec], threads: int | None) -> list[dict]:
    """Child process (or this one, for tests): the given runs in turn; returns their records (peak RSS from the run manifests)."""
    records = []
    for spec in specs:
        raw = copy.deepcopy(spec.raw)
        if threads:
            set_dotted(raw, ["run", "threads"], threads)
        cfg = validate(raw, base_dir=spec.base_dir, source=spec.source, models=MODELS)
        t0 = time.perf_counter()
        try:
            with run_lock(spec.run_dir, log=lambda m: None):  # the run folder's lock from before the data are linked in
                share_data_stages(spec)
                manifest = run_stages(cfg, spec.run_dir, list(STAGE_NAMES), log=lambda m: None)
        except Exception as exc:  # noqa: BLE001 - one failing run must not lose the protocol's other runs
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(f"  {_tag(spec)}: FAILED: {msg}", file=sys.stderr, flush=True)
            records.append({"detector": spec.detector, "sweep": spec.sweep, "repeat": spec.repeat, "run_dir": str(spec.run_dir), "error": msg})
            continue
        st = manifest.stages
        print(f"  {_tag(spec)}: {time.perf_counter() - t0:.0f} s, AUROC {st['evaluate'].get('details', {}).get('auroc', float('nan')):.3f}",
              file=sys.stderr, flush=True)
        records.append({"detector": spec.detector, "sweep": spec.sweep, "repeat": spec.repeat, "run_dir": str(spec.run_dir),
                        "train_s": st["train"].get("wall_time_s"), "score_s": st["score"].get("wall_time_s"),
                        "train_details": st["train"].get("details", {}), "train_counts": st["train"].get("counts", {}),
                        "scored": st["score"].get("counts", {}).get("scored"),
                        # from the manifest, so a resumed run keeps the peak of the process that trained it
                        "peak_rss_mb": max(float(st[n].get("peak_rss_mb") or 0.0) for n in ("train", "score", "evaluate"))})
    return records


def _announce(cfg: Config, specs: list[RunSpec], quick: bool) -> None:
    print(f"[bench] {cfg.bench.protocol}: {len(specs)} run(s), {len({s.detector for s in specs})} detector(s){' (quick)' if quick else ''}",
          file=sys.stderr, flush=True)


def _published(out: Path, name: str) -> dict | None:
    """The protocol's result document as last published in ``out``; None if absent or unreadable."""
    try:
        return json.loads((out / "bench" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def _carried(doc: dict, cfg: Config, out: Path) -> dict:
    """``--only``: the detectors not run keep their rows from the document last published in ``out``."""
    labels = [d.label for d in cfg.bench.detectors] + [e.label for e in cfg.bench.ensembles]
    return carry_over(doc, _published(out, doc["slug"]), labels)


def _publish(doc: dict, out: Path) -> None:
    """Save one protocol's result document, its figures and the rebuilt BENCHMARKS.md."""
    with io.confine(out):
        io.write_json(out / "bench" / f"{doc['slug']}.json", doc)
        plot_protocol(doc, out / "bench")
        md = write_markdown(out)
    print(f"[bench] {doc['protocol']} done in {doc['wall_s'] / 60:.1f} min; wrote {md}", file=sys.stderr, flush=True)


def exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Worker initializer: end this process (SIGTERM to itself) once ``parent_pid`` is gone.

    A killed ``pipeline bench`` must not leave its workers training on: they would hold their run
    locks and the CPU, and a resumed benchmark would find its runs busy. Stages write atomically,
    so a run ended this way resumes. Polls the parent id (portable; Linux's PR_SET_PDEATHSIG is not)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class _InProcess:
    """``jobs=0``: each run in this process as it is submitted (tests; the memory column is then this process's)."""

    def __enter__(self) -> "_InProcess":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - raised again by result(), as from a worker process
            fut.set_exception(exc)
        return fut


def run_bench(configs: list[Path], data_root: Path | None, out: Path, runs_root: Path, quick: bool, jobs: int,
              only: list[str] | None, repeats: int | None = None) -> Path:
    """``pipeline bench``: every protocol; each protocol's result is saved as soon as its last run ends.

    ``jobs``: runs at once, each in a fresh process (so its peak memory is its own; one thread
    each when > 1); 0 runs each run in this process as it is queued (tests). All protocols share
    one queue of runs: every config is planned and validated first (a typo in the last protocol
    fails before the first trains), then each protocol's data stages run here while the workers
    train the runs already queued, so no core idles at the end of a protocol waiting for its
    slowest detector.
    """
    (out / "bench").mkdir(parents=True, exist_ok=True)
    git_commit()  # the code that ran is the code at the start, whatever is committed meanwhile
    t0 = time.perf_counter()
    planned = []
    for path in configs:
        cfg, specs = plan(path, data_root, runs_root, quick, only, repeats)
        if specs:
            planned.append((path, cfg, specs))
        else:
            print(f"[bench] {cfg.bench.protocol}: no detector matches --only {', '.join(only or [])}; skipped", file=sys.stderr, flush=True)
    threads = 1 if jobs > 1 else None
    pending: dict[Future, int] = {}  # future → protocol index
    results: list[dict[str, list[dict]]] = [{} for _ in planned]
    left = [len(specs) for _, _, specs in planned]
    started = [0.0] * len(planned)

    def collect(fut: Future) -> None:
        i = pending.pop(fut)
        for rec in fut.result():
            results[i].setdefault(rec["detector"], []).append(rec)
        left[i] -= 1
        if left[i] == 0:  # the protocol's last run: publish it now
            path, cfg, specs = planned[i]
            doc = summarise(cfg, path, specs, results[i], quick, jobs, time.perf_counter() - started[i])
            _publish(_carried(doc, cfg, out) if only else doc, out)

    n_tasks = sum(left)
    pool = (ProcessPoolExecutor(max_workers=max(1, min(jobs, n_tasks)), mp_context=get_context("spawn"),
                                initializer=exit_with_parent, initargs=(os.getpid(),)) if jobs else _InProcess())
    with pool:
        for i, (_path, cfg, specs) in enumerate(planned):
            started[i] = time.perf_counter()
            _announce(cfg, specs, quick)
            try:
                prepare_data(specs)
            except Exception as exc:  # noqa: BLE001 - one protocol's bad data must not stop the others
                print(f"[bench] {cfg.bench.protocol}: data stages failed, protocol skipped: {type(exc).__name__}: {exc}".splitlines()[0],
                      file=sys.stderr, flush=True)
                continue
            for spec in specs:  # one task per run: the 5 folds of a slow detector spread over the workers
                pending[pool.submit(_run_specs, [spec], threads)] = i
            for fut in [f for f in pending if f.done()]:  # publish what has finished (in this process: the whole protocol)
                collect(fut)
        for fut in as_completed(list(pending)):
            collect(fut)
    print(f"[bench] all protocols: {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    return out / "BENCHMARKS.md"
