"""Pinned outputs: the same config and seed give the same tables across code changes and machines.

The pins are values with a tolerance, not hashes of raw float bytes (which hold only on the CPU
that recorded them): see tests/pinned.py for what is pinned, the tolerances and why. Each config
is checked twice: with this machine's own kernels, and with the portable baseline kernels of
torch, oneDNN, MKL and OpenBLAS, which stand in for another processor.
"""

from __future__ import annotations

import pytest
from pinned import CONFIGS, OTHER_KERNELS, check, pinned_run


@pytest.mark.parametrize("kernels", ["native", "other"])
@pytest.mark.parametrize("config", CONFIGS)
def test_tables_match_the_pinned_values(config, kernels, tmp_path):
    trained, scored = pinned_run(config, tmp_path / "run", OTHER_KERNELS if kernels == "other" else None)
    assert trained.returncode == 0, trained.stderr
    assert scored.returncode == 0, scored.stderr
    problems = check(config, tmp_path / "run")
    assert not problems, "\n".join(problems)


def test_the_check_fails_on_a_changed_value(tmp_path):
    """The comparison can fail: a float moved by 1e-3 (relative), a flipped flag, a changed split."""
    import pandas as pd
    from pinned import table_differences

    want = pd.DataFrame({"sample_id": ["a", "b"], "split": ["train", "test"], "elbo": [100.0, 200.0], "flagged": [False, True]})
    assert table_differences(want.copy(), want) == []
    moved = want.assign(elbo=[100.0, 200.2])
    assert table_differences(moved, want) and table_differences(want.assign(elbo=[100.0, 200.01]), want) == []
    assert table_differences(want.assign(flagged=[True, True]), want)
    assert table_differences(want.assign(split=["test", "test"]), want)
