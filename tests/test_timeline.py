"""`predict_timeline` and `keras-r21d predict --timeline`: every window of a generated video
against the network run on the same frames decoded independently (tests/media.decode_all),
window times against hand arithmetic, and the JSON, CSV and PNG written from it."""

import csv
import json
import logging
import re

import numpy as np
import pytest
from conftest import randomize_batchnorm
from matplotlib.figure import Figure
from media import decode_all, write_video

import keras_r21d
from keras_r21d import cli
from keras_r21d.data.preprocessing import preprocess_input
from keras_r21d.timeline import (
    plot_timeline,
    predict_timeline,
    timeline_classes,
    write_timeline_csv,
    write_timeline_json,
)

FPS = 25
FRAMES = 40
LABELS = ["walk", "run", "jump", "sit", "stand", "wave"]
PREPROCESSING = {"resize": [32, 40], "crop": 32}
LINE = re.compile(r"^  (\d+\.\d\d)-(\d+\.\d\d) s  \d+\.\d% \S+(, \d+\.\d% \S+){2}$")


def tiny_model(activation="softmax"):
    model = keras_r21d.get_model("r3d_10", widths=(4, 4, 8, 8), classes=len(LABELS),
                                 classifier_activation=activation,
                                 metadata={"labels": LABELS, "preprocessing": PREPROCESSING})
    randomize_batchnorm(model, seed=3)
    fc = model.get_layer("fc")
    kernel, bias = fc.get_weights()
    fc.set_weights([kernel * 30, bias])  # clear winners, so the top classes have no near-ties
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    # Moving bars over noise, so that windows differ: 40 frames of 40x48 at 25 fps.
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 60, (FRAMES, 40, 48, 3), dtype=np.uint8)
    for t in range(FRAMES):
        frames[t, :, (t * 3) % 48:(t * 3) % 48 + 6] = 255
        frames[t, (t * 5) % 40:(t * 5) % 40 + 4, :, t % 3] = 200
    path = tmp_path_factory.mktemp("video") / "moving.avi"
    write_video(path, frames, fps=FPS)
    return path


@pytest.fixture(scope="module")
def decoded(video):
    return decode_all(video)


@pytest.fixture(scope="module")
def preset(model, tmp_path_factory):
    return keras_r21d.save_preset(model, tmp_path_factory.mktemp("preset") / "tiny",
                                  {"labels": LABELS, "preprocessing": PREPROCESSING})


def reference(model, decoded, windows):
    """The network on the frames that `windows` (lists of frame numbers) name, decoded by
    a plain sequential PyAV decode."""
    clips = np.stack([decoded[list(w)] for w in windows])
    x = preprocess_input(clips, resize=tuple(PREPROCESSING["resize"]), crop=PREPROCESSING["crop"])
    return np.asarray(model.predict(x, verbose=0))


def test_every_window_is_the_network_on_its_frames_at_hand_computed_times(model, video, decoded):
    assert len(decoded) == FRAMES
    # 8 frames every 5: starts 0, 5, ..., 30, then a last window shifted to end at frame 39.
    starts = [0, 5, 10, 15, 20, 25, 30, 32]
    result = predict_timeline(model, video, window=8, stride=5, top=3, batch_size=3)  # 3 chunks, the last short
    assert [list(f) for f in result["frames"]] == [list(range(s, s + 8)) for s in starts]
    np.testing.assert_allclose(result["times"], [(s / FPS, (s + 8) / FPS) for s in starts], rtol=0, atol=1e-9)
    expected = reference(model, decoded, [range(s, s + 8) for s in starts])
    np.testing.assert_allclose(result["probabilities"], expected, rtol=0, atol=1e-5)
    assert result["labels"] == LABELS
    for probs, top in zip(expected, result["top"]):
        order = np.argsort(-probs, kind="stable")[:3]
        assert [(i, name) for i, name, _ in top] == [(int(i), LABELS[i]) for i in order]
        np.testing.assert_allclose([p for _, _, p in top], probs[order], atol=1e-5)


def test_windows_resampled_to_a_rate_and_given_in_seconds(model, video, decoded):
    # At 12.5 fps every other frame: 20 samples at k / 12.5 s. Windows of 0.64 s = 8 samples
    # every 0.32 s = 4 samples: starts 0, 4, 8, 12 (12 + 8 = 20 samples, the end).
    result = predict_timeline(model, video, window=0.64, stride=0.32, fps=12.5, unit="seconds")
    starts = [0, 4, 8, 12]
    frames = [[2 * k for k in range(s, s + 8)] for s in starts]
    assert [list(f) for f in result["frames"]] == frames
    np.testing.assert_allclose(result["times"], [(s / 12.5, (s + 8) / 12.5) for s in starts], atol=1e-9)
    np.testing.assert_allclose(result["probabilities"], reference(model, decoded, frames), atol=1e-5)
    # No window in seconds: the clip length (16, no other stored) in samples, every 0.32 s = 8 samples.
    result = predict_timeline(model, video, stride=0.32, unit="seconds")
    assert [f[0] for f in result["frames"]] == [0, 8, 16, 24] and len(result["frames"][0]) == 16


def test_logits_become_probabilities(video, decoded):
    logits_model = tiny_model(activation=None)
    result = predict_timeline(logits_model, video, window=16)  # 16 every 16: 0, 16, then 24 (shifted)
    logits = reference(logits_model, decoded, [range(s, s + 16) for s in (0, 16, 24)])
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(result["probabilities"], softmax, atol=1e-5)
    np.testing.assert_allclose(result["probabilities"].sum(axis=1), 1, atol=1e-5)


def test_json_csv_and_png_hold_the_same_numbers(model, video, tmp_path, monkeypatch):
    result = predict_timeline(model, video, window=4, top=3)  # 10 windows
    write_timeline_json(result, tmp_path / "t.json", probabilities=True)
    write_timeline_csv(result, tmp_path / "t.csv")

    data = json.loads((tmp_path / "t.json").read_text())
    assert data["labels"] == LABELS and data["video"] == str(video) and len(data["windows"]) == 10
    for row, (start, end), top, probs, frames in zip(data["windows"], result["times"], result["top"],
                                                    result["probabilities"], result["frames"]):
        assert (row["start"], row["end"]) == (start, end) and row["frames"] == list(frames)
        assert [(c["index"], c["label"], c["probability"]) for c in row["top"]] == top
        assert row["probabilities"] == [float(p) for p in probs]

    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["start", "end", "label_1", "probability_1", "label_2", "probability_2", "label_3",
                       "probability_3"]
    assert len(rows) == 11
    for row, (start, end), top in zip(rows[1:], result["times"], result["top"]):
        assert (float(row[0]), float(row[1])) == (start, end)
        assert [(row[2 + 2 * k], float(row[3 + 2 * k])) for k in range(3)] == [(n, p) for _, n, p in top]

    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), save(fig, *a, **k))[1])
    plot_timeline(result, tmp_path / "t.png", top=4)
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "t.png")
    assert image.shape[:2] == (400, 1000)
    rgb = image[..., :3].reshape(-1, 3)
    assert (rgb < 0.9).any(axis=1).mean() > 0.01 and len(np.unique(rgb, axis=0)) > 50  # drawn, not blank
    blue = np.array([0x1F, 0x77, 0xB4]) / 255  # the first line's colour (matplotlib's C0)
    assert (np.abs(rgb - blue).max(axis=1) < 0.02).sum() > 100

    mean = result["probabilities"].astype(np.float64).mean(axis=0)
    expected = [LABELS[i] for i in np.argsort(-mean)[:4]]
    assert np.sort(mean)[::-1][3] - np.sort(mean)[::-1][4] > 1e-4  # the 4th and 5th do not tie
    (ax,) = figures[0].axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == expected
    assert [name for _, name, _ in timeline_classes(result, 4)] == expected
    centres = [(start + end) / 2 for start, end in result["times"]]
    for line, name in zip(ax.get_lines(), expected):
        np.testing.assert_allclose(line.get_xdata(), centres)
        np.testing.assert_allclose(line.get_ydata(), result["probabilities"][:, LABELS.index(name)])
    assert ax.get_xlabel().startswith("time (s") and "moving.avi" in ax.get_title()


def test_cli_timeline_writes_three_files_and_prints_every_window(model, video, preset, tmp_path, capsys):
    prefix = tmp_path / "out" / "moving"
    code = cli.main(["predict", str(video), "--timeline", "--timeline-out", str(prefix), "--model", "r3d_10",
                     "--weights", str(preset), "--window", "8"])
    out = capsys.readouterr().out
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(lines) == 5 and all(LINE.match(line) for line in lines), out
    expected = predict_timeline(model, video, window=8, top=5)
    for line, (start, end), top in zip(lines, expected["times"], expected["top"]):
        assert line.startswith(f"  {start:.2f}-{end:.2f} s  {top[0][2]:.1%} {top[0][1]}, ")
    for suffix in (".json", ".csv", ".png"):
        assert prefix.with_suffix(suffix).is_file()
    data = json.loads(prefix.with_suffix(".json").read_text())
    assert data["window"] == 8 and [(w["start"], w["end"]) for w in data["windows"]] == expected["times"]
    for row, top in zip(data["windows"], expected["top"]):
        assert [c["label"] for c in row["top"]] == [n for _, n, _ in top]
        np.testing.assert_allclose([c["probability"] for c in row["top"]], [p for _, _, p in top], atol=1e-5)

    code = cli.main(["predict", str(video), "--timeline", "--model", "r3d_10", "--weights", str(preset),
                     "--window", "1", "--unit", "seconds", "--stride", "0.5", "--json"])
    data = json.loads(capsys.readouterr().out)  # nothing but JSON on stdout
    assert code == 0 and data["failed"] == {}
    # 1 s = 25 frames, every 0.5 s = 12.5 frames, rounded to 12: starts 0, 12, then 15 (shifted to the end).
    assert [w["frames"][0] for w in data["timelines"][str(video)]["windows"]] == [0, 12, 15]


def test_a_video_shorter_than_the_window_is_looped_with_a_warning(model, video, decoded, caplog):
    with caplog.at_level(logging.WARNING, logger="keras_r21d"):
        result = predict_timeline(model, video, window=64)
    (record,) = [r for r in caplog.records if "fewer than one window" in r.getMessage()]
    assert "moving.avi" in record.getMessage() and "\n" not in record.getMessage()
    assert [list(f) for f in result["frames"]] == [[k % FRAMES for k in range(64)]]
    assert result["times"] == [(0.0, FRAMES / FPS)]
    np.testing.assert_allclose(result["probabilities"], reference(model, decoded, [np.arange(64) % FRAMES]),
                               atol=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["--fps", "0"], "argument --fps: 0 is out of range; expected a number > 0"),
    (["--window", "-2"], "argument --window: -2 is out of range; expected a number > 0"),
    (["--unit", "hours"], "argument --unit: invalid choice: 'hours'"),
])
def test_cli_refuses_bad_arguments_in_one_line(video, extra, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["predict", str(video), "--timeline", "--model", "r3d_10", *extra])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


@pytest.mark.parametrize("args, message", [
    (["MISSING", "--timeline"], "'MISSING' does not exist; pass video files or folders of videos."),
    (["VIDEO", "--window", "8"], "--window only apply with --timeline"),
    (["VIDEO", "--timeline", "--window", "8.5"], "With unit='frames', `window` is a whole number of frames"),
])
def test_cli_reports_bad_input_in_one_line(video, preset, tmp_path, args, message, capsys):
    args = [str(tmp_path / "missing.avi") if a == "MISSING" else str(video) if a == "VIDEO" else a for a in args]
    message = message.replace("MISSING", str(tmp_path / "missing.avi"))
    code = cli.main(["predict", *args, "--model", "r3d_10", "--weights", str(preset)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("keras-r21d predict: error: ") and message in line


def test_cli_skips_an_unreadable_video_and_keeps_the_others(video, preset, tmp_path, capsys):
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"RIFF not a video")
    code = cli.main(["predict", str(video), str(broken), "--timeline", "--model", "r3d_10", "--weights", str(preset),
                     "--window", "16", "--json", "--timeline-out", str(tmp_path / "p")])
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    # Several videos: PREFIX_STEM.* for each that reads.
    assert sorted(p.name for p in tmp_path.glob("p_*")) == ["p_moving.csv", "p_moving.json", "p_moving.png"]
    assert code == 1 and list(data["timelines"]) == [str(video)] and list(data["failed"]) == [str(broken)]
    assert "VideoReadError" in data["failed"][str(broken)]
    assert "1 of 2 videos could not be read" in captured.err


def test_api_refuses_bad_arguments(model, video):
    with pytest.raises(ValueError, match="`fps` must be a positive number"):
        predict_timeline(model, video, fps=0)
    with pytest.raises(ValueError, match="`unit` must be one of"):
        predict_timeline(model, video, unit="hours")
    with pytest.raises(ValueError, match="`top` must be a positive integer"):
        predict_timeline(model, video, top=0)
    with pytest.raises(ValueError, match="`window` is a whole number of frames; received 2.5"):
        predict_timeline(model, video, window=2.5)
    with pytest.raises(ValueError, match="`stride` must be a positive number of seconds"):
        predict_timeline(model, video, window=1, stride=-1, unit="seconds")
    with pytest.raises(OSError, match="absent.avi': No such file"):
        predict_timeline(model, video.with_name("absent.avi"))
