"""The benchmark scripts run outside the test suite, so a renamed function would only show when
someone runs them. Check that every ``from X import Y`` in ``benchmarks/*.py`` (including the
imports inside functions) still resolves."""

from __future__ import annotations

import ast
import importlib

import pytest
from conftest import ROOT

SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module != "__future__":
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_import_of_a_benchmark_resolves(script):
    missing = []
    for module, name in _imports(script):
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            if module.split(".")[0] in {"dicom2nifti", "ray"}:  # optional peers/extras, imported only when asked for
                continue
            missing.append(f"{module}: {exc}")
            continue
        if name and name != "*" and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{script.name}: unresolved imports {missing}"
