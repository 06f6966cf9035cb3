"""The console script, run as a user runs it."""

import json
import shutil
import subprocess
import sys

import pytest


def run_cli(*args):
    exe = shutil.which("keras-r21d")
    command = [exe] if exe else [sys.executable, "-m", "keras_r21d.cli"]
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=600)


def test_models_prints_published_sizes_and_costs():
    run = run_cli("models", "mc*", "--json")
    assert run.returncode == 0, run.stderr
    rows = {r["name"]: r for r in json.loads(run.stdout)}
    # REFERENCE section 5 at 16 frames: params (M) and GMAC.
    published = {"mc2_18": (11.401, 28.55), "mc3_18": (11.695, 43.34),
                 "mc4_18": (12.728, 39.95), "mc5_18": (16.856, 39.90)}
    assert set(rows) == set(published)
    for name, (params, gmac) in published.items():
        assert rows[name]["params"] / 1e6 == pytest.approx(params, abs=1.001e-3)
        assert rows[name]["macs"] / 1e9 == pytest.approx(gmac, rel=5e-3)


def test_models_table_with_torchvision_widths_and_8_frames():
    run = run_cli("models", "r2plus1d_18", "--frames", "8", "--midplanes", "per_block")
    assert run.returncode == 0, run.stderr
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("r2plus1d_18")][0]
    assert "31,505,325" in line and "20.26" in line


def test_models_reports_unknown_pattern():
    run = run_cli("models", "c3d*")
    assert run.returncode != 0 and "No registered network matches 'c3d*'" in run.stderr


