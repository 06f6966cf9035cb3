"""`keras-r21d predict` and `predict_video` on the real videos of ../shared/data."""

import json
import shutil

import numpy as np
import pytest
from conftest import SHARED_DATA
from media import decode_all
from test_golden import GOLDEN

from keras_r21d import cli
from keras_r21d.data.preprocessing import preprocess_input
from keras_r21d.inference import predict_video
from keras_r21d.presets.convert import convert_checkpoint
from keras_r21d.presets.files import load_preset

VIDEOS = SHARED_DATA / "videos"
pytestmark = pytest.mark.skipif(not VIDEOS.is_dir(), reason=f"real videos not found at {VIDEOS}")
LABELS = ["north", "east", "south", "west", "still"]


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    # The golden tiny R(2+1)D-18 (5 classes), with class names and a clip length stored.
    out = tmp_path_factory.mktemp("preset") / "tiny"
    return convert_checkpoint(GOLDEN / "r2plus1d_tiny.pth", out, metadata={"labels": LABELS, "frames": 8})




def test_predict_video_averages_uniformly_spaced_clips(preset):
    model = load_preset(preset)
    path = VIDEOS / "v_SoccerJuggling_g23_c01.avi"
    frames = decode_all(path)  # 240 frames
    starts = np.linspace(0, len(frames) - 8, 3).round().astype(int)  # 0, 116, 232
    clips = np.stack([frames[s:s + 8] for s in starts])
    expected = np.asarray(model.predict(preprocess_input(clips), verbose=0)).mean(axis=0)
    top = predict_video(model, path, clips=3, top=5)
    assert [name for _, name, _ in top] == [LABELS[i] for i in np.argsort(-expected)]
    np.testing.assert_allclose([p for _, _, p in top], np.sort(expected)[::-1], rtol=1e-5, atol=1e-6)


def test_predict_loops_a_video_shorter_than_the_clip(preset):
    model = load_preset(preset)
    path = VIDEOS / "TrumanShow_wave_f_nm_np1_fr_med_26.avi"  # 48 frames
    frames = decode_all(path)
    clip = frames[np.arange(64) % len(frames)][None]
    expected = np.asarray(model.predict(preprocess_input(clip), verbose=0))[0]
    top = predict_video(model, path, clips=1, frames=64, top=1)
    assert top[0][1] == LABELS[int(np.argmax(expected))]
    assert top[0][2] == pytest.approx(float(expected.max()), rel=1e-5)


def test_cli_predict_every_real_video_as_json(preset, capsys):
    code = cli.main(["predict", str(VIDEOS), "--weights", str(preset), "--clips", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["failed"] == {}
    videos = sorted(p.name for p in VIDEOS.iterdir() if p.suffix in (".avi", ".mp4"))
    assert sorted(p.split("/")[-1] for p in out["predictions"]) == videos
    for top in out["predictions"].values():
        probs = [row["probability"] for row in top]
        assert len(top) == 5 and probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
        assert {row["label"] for row in top} == set(LABELS)


def test_cli_predict_prints_top5_and_counts_unreadable_files(preset, tmp_path, capsys):
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"RIFF not a video")
    shutil.copy(VIDEOS / "test_xvid_mp3.avi", tmp_path / "good.avi")
    code = cli.main(["predict", str(tmp_path / "good.avi"), str(broken), "--weights", str(preset),
                     "--clips", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert "good.avi" in captured.out and captured.out.count("%") == 5
    assert "broken.avi" in captured.out + captured.err and "1 of 2 videos could not be read" in captured.err


def test_cli_predict_goes_on_past_a_bad_video_and_json_stays_valid(preset, tmp_path, capsys, monkeypatch):
    from keras_r21d import inference

    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"RIFF not a video")
    for name in ("a.avi", "c.avi"):
        shutil.copy(VIDEOS / "test_xvid_mp3.avi", tmp_path / name)
    real = inference.predict_video

    def failing_on_c(model, path, **kwargs):  # a decoder error mid-stream, as a resolution change gives
        if str(path).endswith("c.avi"):
            raise RuntimeError("decoder lost its frame size")
        return real(model, path, **kwargs)

    monkeypatch.setattr(inference, "predict_video", failing_on_c)
    code = cli.main(["predict", str(tmp_path), "--weights", str(preset), "--clips", "2", "--json"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # nothing but the JSON on stdout
    assert code == 1
    assert list(out["predictions"]) == [str(tmp_path / "a.avi")]  # the result before the failures is kept
    assert set(out["failed"]) == {str(broken), str(tmp_path / "c.avi")}
    assert "RuntimeError: decoder lost its frame size" in out["failed"][str(tmp_path / "c.avi")]
    assert f"skipped {tmp_path / 'c.avi'}" in captured.err and "2 of 3 videos could not be read" in captured.err
