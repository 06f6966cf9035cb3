"""Clip features of videos (`keras-r21d extract`): windows by time against a reference over
PyAV's own timestamps, features against the network on the same frames, torchvision's
penultimate layer, a killed run resumed, and bad input."""

import fractions
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest
from conftest import SHARED_DATA
from media import decode_all, pyav_times, write_rate_videos, write_timed_video, write_video

import keras_r21d
from keras_r21d.data.preprocessing import preprocess_input
from keras_r21d.data.sampling import windows
from keras_r21d.data.video import frame_times
from keras_r21d.features import extract_features, feature_model

TINY = {"widths": (4, 4, 8, 8)}


def reference_windows(times, fps, size, stride):
    """Frame numbers and [start, end) of full windows, by the rule written out in exact
    arithmetic: at instant k / fps the frame shown is the last one whose time is <= it;
    instants run while the last frame is on screen (its time plus its gap to the one before)."""
    end = times[-1] + (times[-1] - times[-2])
    samples, k = [], 0
    while fractions.Fraction(k) / fractions.Fraction(fps) < end:
        instant = fractions.Fraction(k) / fractions.Fraction(fps)
        samples.append((max(i for i, t in enumerate(times) if t <= instant), instant))
        k += 1
    out = []
    for s in range(0, len(samples) - size + 1, stride):
        chunk = samples[s:s + size]
        out.append(([f for f, _ in chunk], chunk[0][1], chunk[-1][1] + fractions.Fraction(1) / fractions.Fraction(fps)))
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rates")
    videos = write_rate_videos(folder, 47, (32, 32))
    rng = np.random.default_rng(1)
    gaps = rng.choice([20, 40, 100], size=40)  # 50, 25 and 10 fps in turn
    videos["variable"] = folder / "variable.mp4"
    write_timed_video(videos["variable"], rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8),
                      np.concatenate([[0], np.cumsum(gaps[:-1])]))
    return videos


REAL = ["R6llTwEh07w.mp4", "SOX5yA1l24A.mp4", "test_h264.mp4", "v_SoccerJuggling_g23_c01.avi"]


@pytest.mark.parametrize("fps", [15, 10])
@pytest.mark.parametrize("video", ["25", "29.97", "30", "variable", *REAL])
def test_windows_at_a_frame_rate_match_the_rule_over_pyav_timestamps(generated, video, fps):
    path = generated.get(video) or SHARED_DATA / "videos" / video
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data not mounted)")
    times = pyav_times(path)
    assert np.allclose(frame_times(path), [float(t) for t in times])
    expected = reference_windows(times, fps, size=8, stride=5)
    got = windows(frame_times(path), 8, 5, fps=fps, tail="drop")
    assert len(got) == len(expected) > 0
    for window, (frames, start, end) in zip(got, expected):
        assert window.frames.tolist() == frames
        assert window.start == pytest.approx(float(start), abs=1e-9) and window.end == pytest.approx(float(end), abs=1e-9)


def test_constant_rate_sampling_is_torchvisions_resampling():
    """torchvision's VideoClips._resample_video_idx: every (rate / fps)-th frame, floored."""
    for rate, fps in ((30, 15), (25, 15), (30000 / 1001, 15), (24, 10)):
        times = np.arange(300) / rate
        got = np.concatenate([w.frames for w in windows(times, 1, 1, fps=fps, tail="drop")])
        step = rate / fps
        expected = np.floor(np.arange(len(got)) * step).astype(int) if step != int(step) else \
            np.arange(0, 300, int(step))
        np.testing.assert_array_equal(got, expected)


def test_window_policies_by_hand():
    times = np.arange(10) / 10.0  # 10 frames at 10 fps, one second
    starts = lambda **kw: [int(w.frames[0]) for w in windows(times, 4, 3, **kw)]  # noqa: E731
    assert starts(tail="drop") == [0, 3, 6]
    assert starts(tail="shift") == [0, 3, 6]  # 6..9 already ends at the last frame
    assert [int(w.frames[0]) for w in windows(times[:9], 4, 3, tail="shift")] == [0, 3, 5]
    assert [w.frames.tolist() for w in windows(times, 4, 4, tail="shift")] == [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]
    assert [w.frames.tolist() for w in windows(times, 4, 4, tail="pad")] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]
    assert [w.frames.tolist() for w in windows(times, 4, 4, tail="drop")] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # Overlapping windows: one padded window past the end, not one per remaining stride.
    padded = windows(np.arange(21) / 10.0, 16, 4, tail="pad")
    assert [int(w.frames[0]) for w in padded] == [0, 4, 8] and padded[-1].frames.tolist() == [*range(8, 21), 20, 20, 20]
    short = np.arange(3) / 10.0
    assert windows(short, 5, short="loop")[0].frames.tolist() == [0, 1, 2, 0, 1]
    assert windows(short, 5, short="pad")[0].frames.tolist() == [0, 1, 2, 2, 2]
    # Seconds: 0.4 s windows every 0.3 s at 10 fps are 4 samples every 3.
    assert [w.frames.tolist() for w in windows(times, 0.4, 0.3, unit="seconds", tail="drop")] == \
        [w.frames.tolist() for w in windows(times, 4, 3, tail="drop")]
    first = windows(times, 4, 4)[0]
    assert (first.start, first.end) == (0.0, pytest.approx(0.4))


@pytest.mark.parametrize("changes, message", [
    ({"fps": 0}, "`fps` must be a positive number"), ({"fps": -15}, "`fps` must be a positive number"),
    ({"size": 0}, "`window` must be a positive number of frames; received 0"),
    ({"stride": 1.5}, "`stride` is a whole number of frames; received 1.5"),
    ({"unit": "minutes"}, "`unit` must be one of"),
    ({"tail": "wrap"}, "`tail` must be one of"), ({"short": "skip"}, "`short` must be one of"),
])
def test_bad_window_settings_say_what_is_allowed(changes, message):
    settings = {"times": np.arange(10) / 10.0, "size": 4, **changes}
    with pytest.raises(ValueError, match=message):
        windows(**settings)


@pytest.fixture(scope="module")
def tiny_network():
    keras.utils.set_random_seed(0)
    return keras_r21d.get_model("r3d_10", classes=3, **TINY)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(1)
    paths = []
    for k, length in enumerate((30, 21, 5)):  # the last one is shorter than a window
        paths.append(folder / f"v{k}.avi")
        write_video(paths[-1], rng.integers(0, 255, (length, 40, 48, 3), dtype=np.uint8))
    return paths


def test_features_equal_the_network_on_the_same_frames(tiny_network, videos, tmp_path, caplog):
    out = tmp_path / "features.h5"
    result = extract_features(tiny_network, videos, out, window=8, stride=6, batch_size=3, progress=False)
    assert result["skipped"] == {} and result["videos"] == 3
    assert "fewer than one window of 8: its one window loops over them" in caplog.text
    headless = keras_r21d.VideoResNet.from_config({**tiny_network.get_config(), "include_top": False,
                                                   "pooling": "avg"})
    headless.set_weights(tiny_network.get_weights()[:-2])  # all but the classifier
    with h5py.File(out) as f:
        protocol = json.loads(f.attrs["protocol"])
        assert protocol["window"] == 8 and protocol["stride"] == 6 and f.attrs["layer"] == "pool"
        for path in videos:
            group = f[os.path.abspath(path).lstrip("/")]
            frames = decode_all(path)  # an independent decode of every frame
            clips = np.stack([frames[w] for w in group["frames"][:]])
            expected = np.asarray(headless(preprocess_input(clips), training=False))
            np.testing.assert_allclose(group["features"][:], expected, atol=1e-5)
            assert group["features"].shape == (len(clips), 8)
            assert group["start"][0] == 0 and np.all(np.diff(group["start"][:]) > 0)
    conv3 = extract_features(tiny_network, videos[:1], tmp_path / "conv3.h5", window=8, layer="conv3",
                             progress=False)
    assert conv3["windows"] == 4
    with h5py.File(tmp_path / "conv3.h5") as f:
        group = f[os.path.abspath(videos[0]).lstrip("/")]
        clips = np.stack([decode_all(videos[0])[w] for w in group["frames"][:]])
        # The network's layers called one after the other by hand, up to the last block of conv3
        # (not stage_feature_model, which extraction itself uses).
        x = preprocess_input(clips)
        for layer in tiny_network.layers[1:]:
            if not layer.name.startswith(("conv1", "conv2_", "conv3_")):
                break
            x = layer(x, training=False)
        np.testing.assert_allclose(group["features"][:], np.asarray(x), atol=1e-5)


def test_pooled_features_of_a_torchvision_checkpoint_are_its_penultimate_layer(tmp_path):
    script = pathlib.Path(__file__).with_name("torch_reference.py")
    run = subprocess.run([sys.executable, str(script), str(tmp_path), "torchvision:r2plus1d_18"],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert run.returncode == 0, run.stderr[-3000:]
    source = tmp_path / "r2plus1d_18.pth"
    preset = keras_r21d.convert_checkpoint(source, tmp_path / "preset")
    model = keras_r21d.load_preset(preset)
    got = np.asarray(feature_model(model)(np.load(f"{source}.input.npy")))
    expected = np.load(f"{source}.features.npy")
    assert got.shape == expected.shape == (2, 512)
    assert np.abs(got - expected).max() < 1e-4, np.abs(got - expected).max()


def extract_command(videos, out, preset):
    return [sys.executable, "-m", "keras_r21d.cli", "extract", *map(str, videos), "-o", str(out), "--model",
            "r3d_10", "--weights", str(preset), "--window", "8", "--batch-size", "1", "--workers", "1",
            "--no-progress"]


def test_a_killed_extraction_resumes_to_the_same_file(tiny_network, videos, tmp_path):
    preset = keras_r21d.save_preset(tiny_network, tmp_path / "preset")
    many = [tmp_path / f"copy{k}_{p.name}" for k in range(3) for p in videos]
    for copy, source in zip(many, videos * 3):
        copy.write_bytes(source.read_bytes())
    whole = tmp_path / "whole.h5"
    assert subprocess.run(extract_command(many, whole, preset), capture_output=True, timeout=600).returncode == 0
    out = tmp_path / "killed.h5"
    parts = tmp_path / "killed.h5.parts"
    process = subprocess.Popen(extract_command(many, out, preset), stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("*.npz")) if parts.is_dir() else []) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len([p for p in parts.glob("*.npz") if not p.name.startswith(".")])
    assert not out.exists() and 2 <= finished < len(many)
    again = subprocess.run(extract_command(many, out, preset), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"Resuming: {finished} of {len(many)} videos already extracted" in again.stderr
    assert not parts.exists()
    with h5py.File(whole) as a, h5py.File(out) as b:
        keys = []
        a.visititems(lambda name, item: keys.append(name) if isinstance(item, h5py.Dataset) else None)
        assert len(keys) == 4 * len(many)
        for key in keys:
            np.testing.assert_array_equal(a[key][:], b[key][:])
        for key in ("model", "weights", "layer", "protocol"):
            assert a.attrs[key] == b.attrs[key]


def test_bad_input_is_one_line_each_and_the_run_goes_on(tiny_network, videos, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    out = tmp_path / "f.h5"
    result = extract_features(tiny_network, [videos[0], tmp_path / "missing.mp4", tmp_path / "notes.mp4"], out,
                              window=8, progress=False)
    assert result["videos"] == 1 and set(result["skipped"]) == {str(tmp_path / "missing.mp4"),
                                                               str(tmp_path / "notes.mp4")}
    assert "No such file" in result["skipped"][str(tmp_path / "missing.mp4")]
    with h5py.File(out) as f:
        assert set(json.loads(f.attrs["skipped"])) == set(result["skipped"])
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        extract_features(tiny_network, videos[:1], out, window=8, progress=False)
    with pytest.raises(ValueError, match="Unknown layer 'conv6'"):
        extract_features(tiny_network, videos[:1], tmp_path / "g.h5", layer="conv6", progress=False)
    with pytest.raises(ValueError, match="`fps` must be a positive number"):
        extract_features(tiny_network, videos[:1], tmp_path / "g.h5", fps=0, progress=False)
    # An interrupted run's folder is used only with the same settings.
    (tmp_path / "h.h5.parts").mkdir()
    (tmp_path / "h.h5.parts" / "settings.json").write_text(json.dumps({"layer": "conv2"}))
    with pytest.raises(ValueError, match="interrupted extraction with other settings"):
        extract_features(tiny_network, videos[:1], tmp_path / "h.h5", window=8, progress=False)


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from keras_r21d import cli

    monkeypatch.chdir(tmp_path)
    for args, message in (([str(tmp_path), "-o", "x.h5"], "No video found"),
                          (["v.mp4", "-o", "x.h5", "--fps", "0"], "argument --fps: 0 is out of range"),
                          (["v.mp4", "-o", "x.h5", "--window", "2.5"], "`window` is a whole number of frames")):
        try:
            code = cli.main(["extract", *args])
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert len([line for line in err.splitlines() if "error:" in line]) == 1


def ray_worker_pids():
    """Processes of Ray Data's map workers (Ray titles them ray::MapWorker(...))."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"MapWorker" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_ray_cluster_of_two_local_workers_gives_the_single_process_features(tiny_network, videos, tmp_path):
    """Ray Data over 2 workers on 127.0.0.1, one network each, videos given as paths and as
    fsspec file:// URLs, a missing one reported, one worker killed mid-run: the features
    are the single process's."""
    import threading

    pytest.importorskip("ray")
    rng = np.random.default_rng(7)
    many = [tmp_path / f"v{k}.avi" for k in range(12)]  # all different, so no swap between videos goes unseen
    for k, path in enumerate(many):
        write_video(path, rng.integers(0, 255, (12 + 3 * k, 40, 48, 3), dtype=np.uint8))
    single = extract_features(tiny_network, many, tmp_path / "single.h5", window=8, stride=5, progress=False)
    urls = [f"file://{p}" for p in many[:2]] + [str(p) for p in many[2:]] + [str(tmp_path / "missing.mp4")]
    killed = []

    def kill_a_worker_after_its_first_video():
        parts, deadline = tmp_path / "ray.h5.parts", time.time() + 300
        while time.time() < deadline and not (parts.is_dir() and any(parts.glob("*.npz"))):
            time.sleep(0.02)
        for pid in ray_worker_pids()[:1]:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_a_worker_after_its_first_video, daemon=True)
    killer.start()
    spread = extract_features(tiny_network, urls, tmp_path / "ray.h5", window=8, stride=5, progress=False,
                              cluster="local", cluster_workers=2)
    killer.join(timeout=10)
    assert killed, "no Ray worker process was found to kill"
    assert list(spread["skipped"]) == [str(tmp_path / "missing.mp4")] and spread["videos"] == single["videos"] == len(many)
    with h5py.File(tmp_path / "single.h5") as a, h5py.File(tmp_path / "ray.h5") as b:
        for path, url in zip(many, urls):
            one, other = a[os.path.abspath(path).lstrip("/")], b[url.replace("://", "/", 1) if "://" in url
                                                                    else os.path.abspath(url).lstrip("/")]
            for name in ("frames", "start", "end"):
                np.testing.assert_array_equal(one[name][:], other[name][:])
            # Other batch compositions round differently in oneDNN's kernels: float32 rounding apart.
            np.testing.assert_allclose(one["features"][:], other["features"][:], rtol=0, atol=1e-6)


def test_windows_in_seconds_over_videos_of_other_rates_and_a_video_given_twice(tiny_network, tmp_path):
    """0.4 s is 10 frames at 25 fps and 12 at 30 fps: such windows never share a batch; a
    video named twice (relative and absolute) is extracted once."""
    rng = np.random.default_rng(4)
    paths = []
    for fps in (25, 30):
        paths.append(tmp_path / f"{fps}.avi")
        write_video(paths[-1], rng.integers(0, 255, (30, 32, 32, 3), dtype=np.uint8), fps=fps)
    os.chdir(tmp_path)
    result = extract_features(tiny_network, [paths[0], "25.avi", paths[1]], tmp_path / "s.h5", window=0.4,
                              unit="seconds", batch_size=4, progress=False)
    assert result["videos"] == 2 and result["skipped"] == {}
    with h5py.File(tmp_path / "s.h5") as f:
        assert f[os.path.abspath(paths[0]).lstrip("/")]["frames"].shape[1] == 10
        assert f[os.path.abspath(paths[1]).lstrip("/")]["frames"].shape[1] == 12
