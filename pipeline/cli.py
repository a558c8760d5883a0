"""Command line: ``pipeline run|validate|ingest|extract|split|train|score|evaluate CONFIG``.

Errors are printed as one line each (``error: ...``) with a non-zero exit code; ``--debug``
shows the traceback instead. Per-item errors (a bad series, a nodule outside its volume) do not
stop the run; they are listed in ``errors.csv`` and make the exit code 1 once all stages ran.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import MedAnomalyError

EXIT_ITEM_ERRORS = 1
EXIT_FAILED = 2


def _parser() -> argparse.ArgumentParser:
    from pipeline.runner import STAGE_NAMES

    p = argparse.ArgumentParser(prog="pipeline", description="medanomaly: generative anomaly detection on medical images (MONAI).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, optional_config: bool = False) -> None:
        sp.add_argument("config", nargs="?" if optional_config else None, help="YAML config; a bare name (ct_nodules.yaml) falls back to the bundled configs/"
                        + (" (omit with --model)" if optional_config else ""))
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. --set train.epochs=5 (repeatable)")
        sp.add_argument("--debug", action="store_true", help="show tracebacks")

    sp = sub.add_parser("validate", help="check a config without running anything")
    common(sp)
    sp = sub.add_parser("run", help="run every stage (finished, unchanged stages are skipped)")
    common(sp)
    sp.add_argument("--out", type=Path, help="run directory (default: run.out, else ./runs/<config name>)")
    sp.add_argument("--force", action="store_true", help="re-run stages even when up to date")
    sp.add_argument("--from", dest="start", choices=STAGE_NAMES, help="first stage to run")
    sp = sub.add_parser("bench", help="run benchmark protocols (configs/bench/*.yaml) and write BENCHMARKS.md")
    sp.add_argument("configs", nargs="+", type=Path, help="protocol configs, e.g. configs/bench/*.yaml")
    sp.add_argument("--data-root", type=Path, help="folder holding the benchmark data (e.g. ../shared/data); paths in bench.data are relative to it")
    sp.add_argument("--quick", action="store_true", help="every protocol at reduced size (minutes), written to runs/bench_quick/ unless --out is given")
    sp.add_argument("--out", type=Path, help="where BENCHMARKS.md and bench/*.png|json go (default: docs/, or runs/bench_quick with --quick)")
    sp.add_argument("--runs", type=Path, help="run directories (default: runs/bench, or runs/bench_quick/runs with --quick)")
    sp.add_argument("--jobs", type=int, default=1, help="detectors trained at the same time (each with one thread); times are then per-job")
    sp.add_argument("--only", action="append", metavar="LABEL", help="only the detector(s) with this label (repeatable)")
    sp.add_argument("--repeats", type=int, help="run only the first N seeds/folds (exploration; the tables say how many ran)")
    sp.add_argument("--debug", action="store_true")
    sp = sub.add_parser("compare", help="one table and overlaid ROC curves across finished runs")
    sp.add_argument("runs", nargs="+", type=Path, help="run directories")
    sp.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default runs/compare)")
    sp.add_argument("--debug", action="store_true")
    for name in STAGE_NAMES:
        sp = sub.add_parser(name, help=f"run only the {name} stage" + (", or batch-score new data with --model" if name == "score" else ""))
        common(sp, optional_config=name == "score")
        sp.add_argument("--out", type=Path, help="run directory")
        sp.add_argument("--force", action="store_true")
        if name == "score":
            sp.add_argument("--model", type=Path, help="batch-score new data with this trained model folder (needs only the folder)")
            sp.add_argument("--input", type=Path, help="with --model: DICOM folder tree (or npz) to score")
            sp.add_argument("--nodules", type=Path, help="with --model: nodule CSV (patient coordinates, LPS mm)")
            sp.add_argument("--labels", type=Path, help="with --model, for image folders: labels CSV (default: labels.csv inside --input)")
        if name == "train":
            sp.add_argument("--ddp", action="store_true", help="data-parallel training (DDP) under torchrun; always retrains (see docs/SCALING.md)")
            sp.add_argument("--nproc", type=int, help="with --ddp on one machine: processes (default: one per GPU, else 2)")
    return p


def _new_data_config(args):
    """Config for scoring new data: the model's training config with new inputs and no training split."""
    import torch

    from pipeline.config import validate
    from pipeline.errors import ConfigError

    ckpt = args.model / "model.pt" if args.model.is_dir() else args.model
    if not ckpt.is_file():
        raise ConfigError(f"--model {args.model}: no model.pt found (give a run's model/ folder)")
    if args.input is None:
        raise ConfigError("pipeline score --model needs --input (the new data)")
    raw = torch.load(ckpt, map_location="cpu", weights_only=False).get("config")
    if raw is None:
        raise ConfigError(f"{ckpt}: checkpoint has no stored config (trained by an older version)")
    raw["ingest"]["input"] = str(args.input.resolve())
    if args.nodules:
        raw["extract"]["nodules"] = str(args.nodules.resolve())
    if "images" in raw["ingest"]:  # the training run's labels CSV does not describe the new images
        raw["ingest"]["images"]["labels"] = str(args.labels.resolve()) if args.labels else None
        raw["ingest"]["images"]["split_column"] = None
    raw["extract"]["background"]["enabled"] = False
    raw["split"]["method"] = "test_only"
    raw["score"]["model"] = str(ckpt.resolve())
    raw["run"]["out"] = None
    from pipeline.config import apply_overrides

    cfg = validate(apply_overrides(raw, args.overrides), base_dir=Path.cwd(), source=Path.cwd() / f"{ckpt.parent.name}_new_data.yaml")
    return cfg


def input_paths(cfg, stages=None) -> list[tuple[str, Path]]:
    """The input files/folders that ``stages`` (default: all) read from outside the run directory."""
    from pipeline.runner import STAGE_NAMES

    stages = STAGE_NAMES if stages is None else stages
    paths = [("ingest.input", cfg.ingest.input)] if "ingest" in stages else []
    if cfg.ingest.format == "dicom" and "extract" in stages:
        paths.append(("extract.nodules", cfg.extract.nodules))
    if cfg.ingest.format == "images" and "ingest" in stages:
        from preprocessing.labels import labels_path

        paths.append(("ingest.images.labels", labels_path(cfg)))
    if cfg.score.model is not None and "score" in stages:
        paths.append(("score.model", cfg.score.model))
    return paths


def check_inputs(path: Path, cfg, stages=None) -> None:
    """One :class:`ConfigError` listing every missing input path (before any stage starts)."""
    from pipeline.errors import ConfigError

    missing = [f"{key}: {p} does not exist" for key, p in input_paths(cfg, stages) if not p.exists()]
    if missing:
        raise ConfigError(f"{path}: " + ("invalid config:\n  " + "\n  ".join(missing) if len(missing) > 1 else missing[0]))


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
            from models import distributed

            if not distributed.launched_by_torchrun():
                return distributed.launch(argv, args.nproc or distributed.default_nproc())
        return _dispatch(args)
    except MedAnomalyError as exc:
        if args.debug:
            raise
        for line in str(exc).splitlines():
            print(f"error: {line}" if not line.startswith("  ") else line, file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # unwritable or full output directory, unreadable input
        if args.debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; finished work is kept, fix this and re-run to resume", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted; finished stages are kept, re-run to resume", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    from pipeline.config import load_config, resolve_config_path
    from pipeline.errors import ConfigError

    if args.command == "bench":
        from pipeline.bench import run_bench

        root = Path(__file__).resolve().parent.parent
        out = (args.out or (Path("runs/bench_quick") if args.quick else root / "docs")).resolve()
        runs = (args.runs or (out / "runs" if args.quick else Path("runs/bench"))).resolve()
        md = run_bench(args.configs, args.data_root.resolve() if args.data_root else None, out, runs, args.quick, args.jobs, args.only, args.repeats)
        print(f"wrote {md}")
        return 0
    if args.command == "compare":
        from evaluation.compare import compare_runs

        table = compare_runs([r.resolve() for r in args.runs], args.out.resolve())
        print(table.to_string(index=False))
        print(f"wrote {args.out / 'comparison.csv'}, comparison.md and roc_compare.png", file=sys.stderr)
        return 0
    if args.command == "score" and getattr(args, "model", None):
        import models  # noqa: F401 - registers the built-in models
        from pipeline.runner import run_stages

        cfg = _new_data_config(args)
        run_dir = (args.out or Path.cwd() / "runs" / "scored").resolve()
        print(f"run directory: {run_dir}", file=sys.stderr)
        manifest = run_stages(cfg, run_dir, ["ingest", "extract", "split", "score", "evaluate"], force=args.force, log=lambda m: print(m, file=sys.stderr))
        return _finish(manifest, cfg, run_dir, ["ingest", "extract", "split", "score", "evaluate"])
    if args.config is None:
        raise ConfigError(f"pipeline {args.command}: a CONFIG is required")
    path, bundled = resolve_config_path(args.config)
    if bundled:
        print(f"using bundled config {path}", file=sys.stderr)
    cfg = load_config(path, args.overrides)
    if args.command == "validate":
        check_inputs(path, cfg)
        print(f"{path}: valid (model {cfg.model.name}, input {cfg.ingest.input})")
        return 0
    import models  # noqa: F401 - registers the built-in models
    from pipeline.runner import STAGE_NAMES, run_stages

    if args.command == "run":
        names = list(STAGE_NAMES[STAGE_NAMES.index(args.start):] if args.start else STAGE_NAMES)
    else:
        names = [args.command]
    check_inputs(path, cfg, names)
    run_dir = _run_dir(cfg, args)
    if getattr(args, "ddp", False):
        return _train_ddp(cfg, run_dir)
    print(f"run directory: {run_dir}", file=sys.stderr)
    manifest = run_stages(cfg, run_dir, names, force=args.force, log=lambda m: print(m, file=sys.stderr))
    return _finish(manifest, cfg, run_dir, names)


def _train_ddp(cfg, run_dir: Path) -> int:
    """One rank of ``pipeline train --ddp`` under torchrun: rank 0 records the stage in the manifest,
    the other ranks run the same training without writing. Always retrains, so every rank agrees."""
    from models import distributed
    from models.train import run as train
    from pipeline.runner import run_stages

    distributed.init(cfg.run.device)
    try:
        if not distributed.is_main():
            train(cfg, run_dir)
            return 0
        print(f"run directory: {run_dir} (DDP, {distributed.rank_world()[1]} processes)", file=sys.stderr)
        manifest = run_stages(cfg, run_dir, ["train"], force=True, log=lambda m: print(m, file=sys.stderr))
        return _finish(manifest, cfg, run_dir, ["train"])
    finally:
        distributed.shutdown()


def _finish(manifest, cfg, run_dir: Path, names: list[str]) -> int:
    n_err = sum(len(manifest.stages.get(n, {}).get("errors", [])) for n in names)
    summary = manifest.stages.get("evaluate", {}).get("details", {})
    if summary.get("auroc") is not None and "evaluate" in names:
        print(f"AUROC ({cfg.evaluate.score}, {cfg.evaluate.split} split): {summary['auroc']:.3f}; see {run_dir / 'metrics.json'}")
    if n_err:
        print(f"{n_err} item error(s); see {run_dir / 'errors.csv'}", file=sys.stderr)
        return EXIT_ITEM_ERRORS
    return 0


if __name__ == "__main__":
    sys.exit(main())
