"""Clip- and video-level evaluation against hand-computed numbers and an independent
computation (PyAV decoding, `preprocess_input`, the model's predictions averaged by hand)."""

import json
import sys
import types

import numpy as np
import pytest
from media import decode_all, write_video

import keras_r21d
from keras_r21d import evaluation
from keras_r21d.data.video import VideoReadError
from keras_r21d.evaluation import plot_confusion, video_metrics
from keras_r21d.inference import to_probabilities

nan = np.nan

# ---------------------------------------------------------------- video_metrics by hand

# 6 classes, 3 videos x 2 clips; video ids 7, 3, 9, clips not grouped.
#   video 7, label 0: clips [.4 .5 .1 0 0 0] (argmax 1, wrong) and [.7 .1 .2 0 0 0] (0, right)
#                     mean [.55 .30 .15 0 0 0] -> 0, right
#   video 3, label 2: clips [.1 0 .8 .1 0 0] (2, right) and [.1 0 .3 .6 0 0] (3, wrong)
#                     mean [.10 0 .55 .35 0 0] -> 2, right
#   video 9, label 4: clips [.3 .25 .2 .15 .1 0] and [.25 .25 .2 .15 .1 .05] (0 both, wrong;
#                     the second ties 0 and 1: the lower index wins)
#                     mean [.275 .25 .2 .15 .1 .025] -> 0, wrong; class 4 is 5th -> right at 5
# clip@1 = 2/6, video@1 = 2/3, video@5 = 3/3; classes 1, 3, 5 have no video.
HAND_PROBS = np.array([
    [0.4, 0.5, 0.1, 0.0, 0.0, 0.0],
    [0.1, 0.0, 0.8, 0.1, 0.0, 0.0],
    [0.3, 0.25, 0.2, 0.15, 0.1, 0.0],
    [0.7, 0.1, 0.2, 0.0, 0.0, 0.0],
    [0.25, 0.25, 0.2, 0.15, 0.1, 0.05],
    [0.1, 0.0, 0.3, 0.6, 0.0, 0.0],
])
HAND_LABELS = np.array([0, 2, 4, 0, 4, 2])
HAND_IDS = np.array([7, 3, 9, 7, 9, 3])


def test_video_metrics_hand_computed():
    m = video_metrics(HAND_PROBS, HAND_LABELS, HAND_IDS)
    assert m["clip@1"] == pytest.approx(2 / 6)
    assert m["video@1"] == pytest.approx(2 / 3)
    assert m["video@5"] == pytest.approx(1.0)
    assert m["clip@5"] == pytest.approx(1.0)
    assert (m["videos"], m["clips"]) == (3, 6)
    expected = np.zeros((6, 6), int)
    expected[0, 0] = expected[2, 2] = expected[4, 0] = 1
    np.testing.assert_array_equal(m["confusion"], expected)
    np.testing.assert_array_equal(m["per_class"], [1.0, nan, 1.0, nan, 0.0, nan])


def test_video_metrics_ties_go_to_the_lower_class():
    flat = np.full((3, 4), 0.25)
    m = video_metrics(flat, [0, 1, 3], [0, 1, 2], top=(1, 2, 4))
    # Every row predicts 0, then 1, 2, 3.
    assert (m["clip@1"], m["clip@2"], m["clip@4"]) == pytest.approx((1 / 3, 2 / 3, 1.0))
    # Two clips that disagree average to a tie between classes 2 and 3: class 2 wins.
    m = video_metrics([[0, 0, 0.6, 0.4], [0, 0, 0.4, 0.6]], [3, 3], [5, 5], top=(1, 2))
    assert (m["clip@1"], m["video@1"], m["video@2"]) == (0.5, 0.0, 1.0)
    assert m["confusion"][3, 2] == 1 and m["confusion"].sum() == 1
    np.testing.assert_array_equal(m["per_class"], [nan, nan, nan, 0.0])


def test_video_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="share one label"):
        video_metrics(HAND_PROBS, [0, 2, 4, 1, 4, 2], HAND_IDS)
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        video_metrics(HAND_PROBS, [0, 2, 4, 0, 4, 6], HAND_IDS)
    with pytest.raises(ValueError, match="shape"):
        video_metrics(HAND_PROBS, HAND_LABELS[:5], HAND_IDS)


def test_to_probabilities_keeps_probabilities_and_softmaxes_logits():
    np.testing.assert_array_equal(to_probabilities(HAND_PROBS), HAND_PROBS)
    e = np.exp([2.0, 1.0, 0.0])
    np.testing.assert_allclose(to_probabilities([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
                               [e / e.sum(), [1 / 3] * 3], rtol=1e-12)
    # A network that records logits: rows that merely look like probabilities are logits too.
    logits_net = keras_r21d.get_model("r3d_10", widths=(4, 4, 8, 8), classes=3, classifier_activation=None)
    looks = np.array([[0.5, 0.25, 0.25]])
    np.testing.assert_allclose(to_probabilities(looks, logits_net), np.exp(looks) / np.exp(looks).sum(), rtol=1e-12)
    softmax_net = keras_r21d.get_model("r3d_10", widths=(4, 4, 8, 8), classes=3)
    np.testing.assert_array_equal(to_probabilities(looks, softmax_net), looks)


def test_protocol_text():
    info, text = evaluation.uniform_protocol(16, 10)
    assert info == {"frames": 16, "clips_per_video": 10, "crops": 1, "crop": "center 112x112 of 128x171",
                    "stride": 1}
    assert text == ("video@k: softmax averaged over 10 uniformly spaced 16-frame clips per video, "
                    "1 center crop (112x112 of 128x171); clip@1: every clip alone")


# ---------------------------------------------------------------- end to end on generated videos



@pytest.fixture(scope="module")
def tiny_videos(tmp_path_factory):
    """4 generated 48x64 videos of 10, 9, 12 and 10 frames, labels 0, 1, 2, 1."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    videos = []
    for i, (length, label) in enumerate([(10, 0), (9, 1), (12, 2), (10, 1)]):
        texture = np.repeat(np.repeat(rng.integers(0, 200, (6, 8, 3)), 8, 0), 8, 1)
        # The texture moves right 4 pixels a frame and brightens.
        frames = np.stack([np.roll(texture, 4 * t, axis=1) + 5 * t for t in range(length)])
        path = root / f"video{i}.avi"
        write_video(path, np.clip(frames, 0, 255).astype(np.uint8))
        videos.append((path, label))
    return videos


@pytest.fixture(scope="module")
def tiny_model(tiny_videos):
    """A tiny R3D returning logits, its classifier set so that clips get different classes."""
    import keras
    from conftest import randomize_batchnorm

    import keras_r21d

    keras.utils.set_random_seed(0)
    model = keras_r21d.get_model("r3d_10", widths=(4, 4, 8, 8), classes=3, input_shape=(4, None, None, 3),
                                 classifier_activation=None)  # logits: evaluate_model applies the softmax
    randomize_batchnorm(model)
    # A random classifier on standardised features (a random init gives one class to every clip).
    fc = model.get_layer("fc")
    clips = np.stack([decode_all(path)[s:s + 4] for path, _ in tiny_videos for s in (0, 3, 5)])
    features = keras.Model(model.input, fc.input).predict_on_batch(preprocess(clips))
    kernel = np.random.default_rng(1).normal(0, 2, fc.kernel.shape) / (features.std(0)[:, None] + 1e-6)
    fc.set_weights([kernel, -features.mean(0) @ kernel])
    return model


class Recorder:
    """Wraps a model and keeps every batch of outputs it returns."""

    def __init__(self, model):
        self.model, self.outputs = model, []
        self.input_shape, self.name = model.input_shape, model.name

    def predict_on_batch(self, x):
        self.outputs.append(np.asarray(self.model.predict_on_batch(x)))
        return self.outputs[-1]


def preprocess(clips):
    from keras import ops

    from keras_r21d.data.preprocessing import preprocess_input

    return ops.convert_to_numpy(preprocess_input(clips))


def reference_probs(model, videos, frames, clips):
    """Per clip softmax from clips decoded with PyAV and preprocessed with preprocess_input."""
    out = []
    for path, _ in videos:
        video = decode_all(path)
        starts = np.linspace(0, len(video) - frames, clips).round().astype(int)
        batch = preprocess(np.stack([video[s:s + frames] for s in starts]))
        logits = np.asarray(model.predict_on_batch(batch), "float64")
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        out.append(e / e.sum(axis=1, keepdims=True))
    return np.stack(out)  # (videos, clips, classes)


def test_evaluate_model_equals_independent_computation(tiny_videos, tiny_model):
    recorder = Recorder(tiny_model)
    result = evaluation.evaluate_model(recorder, tiny_videos, frames=4, clips_per_video=3, batch_size=4,
                                       class_names=["a", "b", "c"], progress=False)
    ref = reference_probs(tiny_model, tiny_videos, frames=4, clips=3)
    # The model saw the same clips (video by video, 3 uniformly spaced clips each).
    logits = np.concatenate(recorder.outputs)
    assert logits.shape == (12, 3) and not np.allclose(logits.sum(1), 1)
    np.testing.assert_allclose(to_probabilities(logits), ref.reshape(12, 3), atol=1e-5)

    labels = np.array([label for _, label in tiny_videos])
    clip_pred, video_pred = ref.argmax(2), ref.mean(1).argmax(1)
    assert len(set(clip_pred.ravel())) >= 2  # the fixture's model gives clips different classes
    assert result["clip@1"] == pytest.approx((clip_pred == labels[:, None]).mean())
    assert result["video@1"] == pytest.approx((video_pred == labels).mean())
    assert result["video@5"] == 1.0  # 3 classes
    assert (result["videos"], result["clips"]) == (4, 12)
    confusion = np.zeros((3, 3), int)
    np.add.at(confusion, (labels, video_pred), 1)
    np.testing.assert_array_equal(result["confusion"], confusion)
    assert result["protocol"]["clips_per_video"] == 3 and result["protocol"]["frames"] == 4
    assert "3 uniformly spaced 4-frame clips" in result["protocol_text"]
    assert result["class_names"] == ["a", "b", "c"]


def test_predict_and_evaluate_see_the_same_clips(tiny_videos, tiny_model):
    """One test-clip path: evaluate's clip probabilities are those of predict's clips."""
    from keras_r21d.inference import video_clips

    recorder = Recorder(tiny_model)
    evaluation.evaluate_model(recorder, tiny_videos, frames=4, clips_per_video=3, batch_size=3, progress=False)
    evaluated = to_probabilities(np.concatenate(recorder.outputs))
    predicted = np.concatenate([to_probabilities(np.asarray(tiny_model.predict_on_batch(
        video_clips(tiny_model, path, clips=3, frames=4)))) for path, _ in tiny_videos])
    np.testing.assert_allclose(evaluated, predicted, atol=1e-5)


def test_evaluate_model_goes_on_past_videos_that_do_not_decode(tiny_videos, tiny_model, tmp_path):
    """A broken file and a missing one among the videos: both are reported with their
    reason, the metrics are those of the readable videos alone (the independent
    reference above), and nothing is lost."""
    broken, missing = tmp_path / "broken.avi", tmp_path / "missing.avi"
    broken.write_bytes(b"RIFF" + bytes(5000))
    videos = [tiny_videos[0], (broken, 1), tiny_videos[1], (missing, 2), *tiny_videos[2:]]
    result = evaluation.evaluate_model(tiny_model, videos, frames=4, clips_per_video=3, batch_size=4,
                                       progress=False)
    ref = reference_probs(tiny_model, tiny_videos, frames=4, clips=3)
    labels = np.array([label for _, label in tiny_videos])
    assert (result["videos"], result["clips"]) == (4, 12)
    assert result["video@1"] == pytest.approx((ref.mean(1).argmax(1) == labels).mean())
    assert sorted(result["skipped"]) == sorted([str(broken), str(missing)])
    assert "no such file" in result["skipped"][str(missing)].lower()
    with pytest.raises(VideoReadError, match=r"(?s)None of the 2 videos could be decoded.*broken\.avi"):
        evaluation.evaluate_model(tiny_model, [(broken, 1), (missing, 2)], frames=4, progress=False)


def test_evaluate_model_checks_its_arguments(tiny_videos, tiny_model):
    with pytest.raises(ValueError, match="exactly 4 frames"):
        evaluation.evaluate_model(tiny_model, tiny_videos, frames=8, progress=False)
    with pytest.raises(ValueError, match="empty"):
        evaluation.evaluate_model(tiny_model, [], frames=4, progress=False)


# ---------------------------------------------------------------- plots and evaluate()

def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), len(data)


@pytest.mark.parametrize("classes", [4, 70])
def test_plot_confusion_writes_a_png(tmp_path, classes):
    confusion = np.random.default_rng(0).integers(0, 5, (classes, classes))
    confusion[1] = 0  # a class with no video
    path = plot_confusion(confusion, [f"class{i}" for i in range(classes)], tmp_path / "c.png")
    width, height, size = png_size(path)
    assert 300 <= width <= 2000 and 300 <= height <= 2000 and size > 5000


def fake_split_loader(videos, names):
    """A stand-in for keras_r21d.data.splits: split k tests on the videos from k - 1 on."""
    module = types.ModuleType("keras_r21d.data.splits")
    module.calls = []

    def load_split(dataset, root, split=1, subset="test", splits_dir=None, check_files=True):
        module.calls.append((dataset, root, split, subset, splits_dir))
        return videos[split - 1:]

    module.load_split = load_split
    module.class_names = lambda dataset, splits_dir=None: list(names)
    module.find_splits_dir = lambda dataset, root=None, splits_dir=None: splits_dir
    return module


def test_evaluate_all_splits_writes_metrics_and_plots(tiny_videos, tiny_model, tmp_path, monkeypatch, capsys):
    loader = fake_split_loader(tiny_videos, ["a", "b", "c"])
    monkeypatch.setitem(sys.modules, "keras_r21d.data.splits", loader)
    result = evaluation.evaluate("ucf101", "/data/ucf", split="all", model=tiny_model, frames=4,
                                 clips_per_video=1, batch_size=4, splits_dir="lists",
                                 output_dir=tmp_path / "out", progress=False)
    assert [c[2:] for c in loader.calls] == [(1, "test", "lists"), (2, "test", "lists"), (3, "test", "lists")]
    for k in (1, 2, 3):
        alone = evaluation.evaluate_model(tiny_model, tiny_videos[k - 1:], frames=4, clips_per_video=1,
                                          progress=False)
        assert result["splits"][k]["video@1"] == alone["video@1"]
        assert result["splits"][k]["videos"] == 5 - k
    expected_mean = sum(result["splits"][k]["video@1"] for k in (1, 2, 3)) / 3
    assert result["mean"]["video@1"] == pytest.approx(expected_mean)
    assert result["mean"]["videos"] == 4 + 3 + 2

    table = capsys.readouterr().out
    assert "clip@1" in table and "video@5" in table and "\nmean " in table
    assert "protocol: video@k: softmax averaged over 1 uniformly spaced 4-frame clips" in table

    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["protocol"]["clips_per_video"] == 1 and saved["class_names"] == ["a", "b", "c"]
    assert saved["splits"]["2"]["videos"] == 3 and "class_names" not in saved["splits"]["2"]
    assert saved["splits"]["3"]["per_class"][0] is None  # split 3 holds no video of class 0
    assert saved["mean"]["video@1"] == pytest.approx(expected_mean)
    assert np.array(saved["splits"]["1"]["confusion"]).sum() == 4
    for k in (1, 2, 3):
        assert result["paths"]["confusion"][k] == tmp_path / "out" / f"confusion_split{k}.png"
        png_size(result["paths"]["confusion"][k])


def test_evaluate_refuses_a_classifier_of_another_size(tiny_videos, tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_r21d.data.splits", fake_split_loader(tiny_videos, "abcd"))
    with pytest.raises(ValueError, match="predicts 3 classes but hmdb51 has 4"):
        evaluation.evaluate("hmdb51", "/data", model=tiny_model, frames=4, progress=False)
    with pytest.raises(ValueError, match="1, 2, 3 or 'all'"):
        evaluation.evaluate("hmdb51", "/data", split=4, model=tiny_model, frames=4, progress=False)


def test_cli_arguments(monkeypatch):
    received = {}
    monkeypatch.setattr(evaluation, "evaluate", lambda *args, **kwargs: received.update(args=args, **kwargs))
    from keras_r21d import cli

    assert cli.main(["evaluate", "ucf101", "/data/ucf", "--split", "all", "--model", "r3d_18", "--weights",
                     "none", "--clips", "5", "-o", "out", "--no-progress"]) == 0
    assert received["args"] == ("ucf101", "/data/ucf")
    assert received["split"] == "all" and received["model"] == "r3d_18" and received["weights"] is None
    assert received["clips_per_video"] == 5 and received["frames"] == 16 and received["output_dir"] == "out"
    assert received["progress"] is False


def test_evaluate_all_splits_with_the_real_loader_on_a_ucf101_tree(tiny_model, tmp_path):
    """The official UCF101 layout: root/<Class>/v_<Class>_gXX_cYY.avi and ucfTrainTestlist/."""
    try:
        import keras_r21d.data.splits  # noqa: F401
    except ImportError as error:
        pytest.skip(f"the split loader keras_r21d.data.splits is not available yet ({error})")
    names = ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    rng = np.random.default_rng(3)
    for k in (1, 2, 3):
        test, train = [], []
        for n in names:
            for group, out in ((k, test), (k % 3 + 1, train)):
                rel = f"{n}/v_{n}_g{group:02d}_c01.avi"
                out.append(rel)
                if not (tmp_path / rel).exists():
                    (tmp_path / n).mkdir(exist_ok=True)
                    write_video(tmp_path / rel, rng.integers(0, 256, (8, 48, 64, 3), dtype=np.uint8))
        (lists / f"testlist0{k}.txt").write_text("".join(f"{r}\n" for r in test))
        (lists / f"trainlist0{k}.txt").write_text(
            "".join(f"{r} {names.index(r.split('/')[0]) + 1}\n" for r in train))
    result = evaluation.evaluate("ucf101", tmp_path, split="all", model=tiny_model, frames=4,
                                 clips_per_video=1, batch_size=4, splits_dir=lists, progress=False,
                                 verbose=False)
    assert result["class_names"] == names
    assert [result["splits"][k]["videos"] for k in (1, 2, 3)] == [3, 3, 3]
    assert result["mean"]["video@1"] == pytest.approx(np.mean([result["splits"][k]["video@1"] for k in (1, 2, 3)]))


def test_evaluate_uses_the_preprocessing_stored_with_the_weights(tiny_videos, tiny_model, monkeypatch):
    """A preset trained with other numbers: evaluate feeds its clips as the preset says,
    checked against clips preprocessed independently with those numbers."""
    from keras import ops

    from keras_r21d.data.preprocessing import preprocess_input

    stored = {"resize": [40, 53], "crop": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    model = type(tiny_model).from_config({**tiny_model.get_config(), "metadata": {"preprocessing": stored}})
    model.set_weights(tiny_model.get_weights())
    monkeypatch.setitem(sys.modules, "keras_r21d.data.splits", fake_split_loader(tiny_videos, ["a", "b", "c"]))
    seen = []
    real_predict = evaluation._predict
    monkeypatch.setattr(evaluation, "_predict", lambda model, batch: seen.append(batch) or real_predict(model, batch))
    result = evaluation.evaluate("ucf101", "/data/ucf", split=1, model=model, frames=4, clips_per_video=2,
                                 batch_size=8, progress=False, verbose=False)
    clips = np.stack([decode_all(path)[s:s + 4] for path, _ in tiny_videos
                      for s in np.linspace(0, len(decode_all(path)) - 4, 2).round().astype(int)])
    expected = ops.convert_to_numpy(preprocess_input(clips, **stored))
    np.testing.assert_allclose(np.concatenate(seen), expected, atol=1e-4)
    assert not np.allclose(expected, ops.convert_to_numpy(preprocess_input(clips)[..., :32, :32, :]), atol=1e-2)
    assert "32x32 of 40x53" in result["protocol_text"]
