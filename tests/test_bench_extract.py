"""`python tools/bench_extract.py --quick`: one run in a subprocess, its JSON checked
against an independent count (the generated videos decoded with plain PyAV, the window
rule written out here) and against its own arithmetic, and its table printed."""

import json
import math
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import TOOLS
from media import decode_all

from keras_r21d.machine import cpu_name

WINDOW = 16
QUICK_FRAMES = [48, 37]  # --quick: 1.6 s at 30 fps, the second video 11 frames shorter


def expected_starts(frames, size=WINDOW):
    """Window starts with stride = size: the full windows side by side, then one ending at
    the last frame when frames are left over; a video shorter than a window has one."""
    if frames < size:
        return [0]
    full = frames // size
    starts = [k * size for k in range(full)]
    if frames % size:
        starts.append(frames - size)
    return starts


def test_expected_starts_by_hand():
    assert expected_starts(48) == [0, 16, 32]
    assert expected_starts(37) == [0, 16, 21]
    assert expected_starts(300) == [16 * k for k in range(18)] + [284]
    assert len(expected_starts(300)) == math.ceil(300 / 16) == 19
    assert expected_starts(5) == [0]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench_extract")
    out, work = folder / "bench.json", folder / "work"
    done = subprocess.run([sys.executable, str(TOOLS / "bench_extract.py"), "--quick", "--json", str(out),
                           "--workdir", str(work)], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout, work


def test_the_windows_are_those_of_the_videos_frame_counts(quick):
    result, _, work = quick
    paths = [pathlib.Path(p) for p in result["source"]["paths"]]
    assert [p.parent for p in paths] == [work] * len(QUICK_FRAMES)
    frames = [len(decode_all(p)) for p in paths]  # independent of keras_r21d's reader
    assert frames == QUICK_FRAMES == result["source"]["frames"]
    windows = [len(expected_starts(n)) for n in frames]

    decode, extract = result["decode"], result["extract"]
    assert [(v["frames"], v["windows"], v["error"]) for v in decode["per_video"]] == [
        (n, w, None) for n, w in zip(frames, windows)]
    assert decode["windows"] == extract["windows"] == extract["network_windows"] == sum(windows)
    assert decode["videos"] == extract["videos"] == len(paths) and extract["skipped"] == {}
    batch = result["model"]["batch_size"]
    assert extract["network_calls"] == math.ceil(sum(windows) / batch)

    # The HDF5 file extract_features wrote: one group per video, a row per window.
    with h5py.File(extract["output"]) as f:
        groups = {f[key].attrs["path"]: f[key] for key in _groups(f)}
        assert sorted(groups) == sorted(map(str, paths))
        for path, n in zip(paths, frames):
            group, starts = groups[str(path)], expected_starts(n)
            assert group["features"].shape == (len(starts), 8)  # widths (4, 4, 8, 8): 8 channels pooled
            assert np.all(np.isfinite(group["features"][()]))
            np.testing.assert_array_equal(group["frames"][()], [np.arange(s, s + WINDOW) for s in starts])


def _groups(f):
    found = []
    f.visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Group) and "features" in item
                 else None)
    return found


def test_the_rates_and_the_verdict_follow_from_the_counts(quick):
    result, _, _ = quick
    model, decode, extract = result["model"], result["decode"], result["extract"]
    for run in model["runs"]:
        assert run["clips"] == run["batches"] * model["batch_size"] and run["batches"] >= 3
        assert run["clips_per_s"] == pytest.approx(run["clips"] / run["seconds"])
    assert model["clips_per_s"] == max(run["clips_per_s"] for run in model["runs"])
    assert decode["windows_per_s"] == pytest.approx(decode["windows"] / decode["seconds"])
    assert extract["windows_per_s"] == pytest.approx(extract["windows"] / extract["seconds"])
    assert extract["videos_per_s"] == pytest.approx(extract["videos"] / extract["seconds"])
    assert 0 < extract["network_s"] <= extract["seconds"]
    assert extract["network_busy"] == pytest.approx(extract["network_s"] / extract["seconds"])
    assert result["ratio"] == pytest.approx(extract["windows_per_s"] / model["clips_per_s"])
    assert result["pass"] == (result["ratio"] >= 0.90) and result["target"] == 0.90
    a, b = model["clips_per_s"], decode["windows_per_s"]
    assert result["serial_windows_per_s"] == pytest.approx(a * b / (a + b))
    assert result["torch"] is None  # --quick's network has no torchvision twin
    assert result["settings"]["model"] == "r3d_10" and model["widths"] == [4, 4, 8, 8]


def test_the_table_prints(quick):
    result, stdout, _ = quick
    lines = stdout.splitlines()
    assert lines[0].startswith(f"Machine: {cpu_name()}") and "ISA:" in lines[0]
    assert lines[1].startswith("TensorFlow oneDNN kernels: ")
    for tag in ("(a) model alone", "(b) decoding + preprocessing alone", "(c) extract_features end to end"):
        assert any(line.startswith(tag) for line in lines), tag
    row = next(line for line in lines if line.startswith("(c)")).split()
    assert f"{result['extract']['windows_per_s']:.2f}" in row and str(result["extract"]["windows"]) in row
    verdict = next(line for line in lines if line.startswith("Target:"))
    assert f"= {result['ratio']:.0%} >= 90%" in verdict
    assert ("PASS" if result["pass"] else "FAIL") in verdict
    assert "Note: --quick: a smoke test" in stdout
