"""The shape of the code: layers, start-up cost, function length, deferred imports, the documented contract."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from conftest import ROOT

from pipeline.runner import STAGES, contract_markdown

PACKAGES = ("pipeline", "preprocessing", "models", "evaluation")
MAX_FUNCTION_LINES = 60
# (module path, function) → modules it may import inside the function; docs/ARCHITECTURE.md says why
DEFERRED = {
    ("pipeline/stages/ingest.py", "run"): {"preprocessing"},
    ("pipeline/stages/extract.py", "run"): {"preprocessing"},
    ("pipeline/stages/split.py", "run"): {"preprocessing"},
    ("pipeline/stages/train.py", "run"): {"models"},
    ("pipeline/stages/score.py", "run"): {"models"},
    ("pipeline/stages/evaluate.py", "run"): {"evaluation"},
    ("pipeline/stages/map_.py", "run"): {"evaluation"},
    ("evaluation/evaluator.py", "write_gan_diagnostics"): {"evaluation"},
    ("pipeline/cli.py", "main"): {"models"},
    ("pipeline/cli.py", "_bench"): {"pipeline.bench"},
    ("pipeline/cli.py", "_compare"): {"evaluation.compare"},
    ("pipeline/cli.py", "_ensemble"): {"evaluation.ensemble", "evaluation.map_ensemble"},
    ("pipeline/cli.py", "_convert"): {"models.checkpoint"},
    ("pipeline/cli.py", "_lidc_nodules"): {"preprocessing.lidc_annotations"},
    ("pipeline/cli.py", "_train_ddp"): {"models"},
    ("pipeline/core/artifacts.py", "_read_csv"): {"pandas"},
    ("pipeline/core/ray_engine.py", "require_ray"): {"ray"},
    ("models/scoring.py", "run"): {"models.ray_scoring"},
    ("models/model_folder.py", "read_meta"): {"models.checkpoint"},
    ("evaluation/compare.py", "_has_tabulate"): {"tabulate"},
    ("preprocessing/resize.py", "resize"): {"monai.transforms"},
}


def _functions():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield path.relative_to(ROOT).as_posix(), node


def test_no_function_is_longer_than_sixty_lines():
    long = [f"{p}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)" for p, n in _functions()
            if n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_function_level_imports_are_only_the_documented_ones():
    found = {}
    for path, fn in _functions():
        for sub in ast.walk(fn):
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                mods = [sub.module] if isinstance(sub, ast.ImportFrom) else [a.name for a in sub.names]
                found.setdefault((path, fn.name), set()).update(mods)
    assert found == DEFERRED
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    assert all(f"`{path}:{name}`" in doc or f"`{path}`" in doc for path, name in DEFERRED)


def test_the_documented_contract_matches_the_declarations():
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = doc.split("<!-- contract:begin", 1)[1].split("-->", 1)[1].split("<!-- contract:end -->", 1)[0].strip()
    assert table == contract_markdown()


def test_stage_declarations_are_consistent():
    from pipeline.core.artifacts import ARTIFACTS
    from pipeline.core.inputs import INPUTS

    names = [s.name for s in STAGES]
    for i, s in enumerate(STAGES):
        assert set(s.after) <= set(names[:i]), s.name  # upstream stages come earlier: the graph runs one way
        assert set(s.inputs) <= set(INPUTS), s.name
        assert set(s.outputs) <= set(ARTIFACTS), s.name


@pytest.mark.parametrize("argv", [["validate", "configs/ct_nodules.yaml"], ["--help"]])
def test_cli_start_up_imports_no_heavy_library(argv):
    code = ("import sys, runpy; sys.argv = ['pipeline', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('pipeline.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'monai', 'pandas', 'sklearn', 'scipy', 'SimpleITK', 'matplotlib', 'pydicom') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
