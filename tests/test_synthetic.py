"""The generated motion dataset: UCF101 layout, and classes that only motion tells apart."""

import numpy as np
import pytest
from media import decode_all

from keras_r21d.data import load_split
from keras_r21d.data.synthetic import MOTION_CLASSES, ORDER_PAIRS, make_motion_dataset, render_clip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("motion")
    return make_motion_dataset(root, videos_per_class=12, frames=10, size=(32, 40), seed=3)


def test_ucf101_layout_and_splits(dataset):
    root, lists = dataset["root"], dataset["splits_dir"]
    raw = (lists / "classInd.txt").read_bytes()
    assert raw.startswith(b"1 MoveLeft\r\n") and raw.count(b"\r\n") == len(MOTION_CLASSES)
    assert b"\r\n" in (lists / "trainlist01.txt").read_bytes()
    for k in (1, 2, 3):
        train = load_split("ucf101", root, k, "train")  # the real UCF101 code path
        test = load_split("ucf101", root, k, "test")
        assert (len(train), len(test)) == (dataset["counts"][k]["train"], dataset["counts"][k]["test"]) == (48, 24)
        groups = lambda videos: {p.stem.split("_g")[1][:2] + p.parent.name for p, _ in videos}  # noqa: E731
        assert not groups(train) & groups(test)  # a group never straddles train and test
        assert {label for _, label in test} == set(range(len(MOTION_CLASSES)))
    frames = decode_all(root / "Grow" / "v_Grow_g01_c01.avi")
    assert frames.shape == (10, 32, 40, 3)


def test_order_pairs_are_time_reversals():
    for backward, forward in ORDER_PAIRS:
        a = render_clip(backward, 12, (32, 32), np.random.default_rng(5))
        b = render_clip(forward, 12, (32, 32), np.random.default_rng(5))
        np.testing.assert_array_equal(a, b[::-1])


def clips(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return [(k, render_clip(kind, 16, (48, 48), rng)) for _ in range(n) for k, kind in enumerate(MOTION_CLASSES)]


def nearest_centroid_accuracy(features, labels):
    features, labels = np.asarray(features, float), np.asarray(labels)
    half = len(labels) // 2
    mean, std = features[:half].mean(0), features[:half].std(0) + 1e-9
    features = (features - mean) / std
    centroids = np.stack([features[:half][labels[:half] == k].mean(0) for k in range(labels.max() + 1)])
    predicted = np.argmin(((features[half:, None] - centroids) ** 2).sum(-1), axis=1)
    return float((predicted == labels[half:]).mean())


def frame_features(frame):
    histogram = np.histogram(frame, bins=16, range=(0, 256))[0] / frame.size
    return np.concatenate([frame.reshape(-1, 3).mean(0), frame.reshape(-1, 3).std(0), histogram])


def test_one_frame_does_not_tell_the_class_but_motion_does():
    data = clips()
    rng = np.random.default_rng(1)
    labels = [k for k, _ in data]
    one_frame = [frame_features(c[rng.integers(len(c))]) for _, c in data]
    assert nearest_centroid_accuracy(one_frame, labels) < 0.30  # chance is 1/6

    def motion(c):  # where the bright square is, first and last frame
        bright = c.max(-1) >= 160
        rows, cols = np.nonzero(bright[0])
        rows2, cols2 = np.nonzero(bright[-1])
        return [cols2.mean() - cols.mean(), rows2.mean() - rows.mean(), bright[-1].sum() - bright[0].sum()]

    moves = [motion(c) for _, c in data]
    assert nearest_centroid_accuracy(moves, labels) > 0.9


def test_time_averaged_frames_do_not_tell_an_order_pair():
    data = clips(80, seed=2)
    for pair in ORDER_PAIRS:
        index = [MOTION_CLASSES.index(name) for name in pair]
        chosen = [(index.index(k), c) for k, c in data if k in index]
        averaged = [np.mean([frame_features(f) for f in c], axis=0) for _, c in chosen]
        assert nearest_centroid_accuracy(averaged, [k for k, _ in chosen]) < 0.65  # chance is 1/2


def test_deterministic_by_seed():
    a = render_clip("MoveUp", 8, (32, 32), np.random.default_rng(9))
    b = render_clip("MoveUp", 8, (32, 32), np.random.default_rng(9))
    c = render_clip("MoveUp", 8, (32, 32), np.random.default_rng(10))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4"):
        make_motion_dataset(tmp_path, videos_per_class=10)
    with pytest.raises(ValueError, match="even sides"):
        make_motion_dataset(tmp_path, size=(31, 40))
    with pytest.raises(ValueError, match="Unknown motion 'Spin'"):
        render_clip("Spin", 8, (32, 32), np.random.default_rng(0))
