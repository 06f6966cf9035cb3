"""The tf.data clip pipeline against independent decoding (sequential PyAV) and a NumPy
computation of the augmentation."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import SHARED_DATA
from media import decode_all, random_videos, write_video
from numpy_reference import bilinear_resize

from keras_r21d.data import pipeline
from keras_r21d.data.pipeline import SkippedVideos, clip_dataset

VIDEOS = SHARED_DATA / "videos"
needs_videos = pytest.mark.skipif(not VIDEOS.is_dir(), reason=f"real videos not found at {VIDEOS}")
MEAN = np.array([0.43216, 0.394666, 0.37645]) * 255  # REFERENCE section 4
STD = np.array([0.22803, 0.22145, 0.216989]) * 255






def real_videos(n=None):
    files = sorted(p for p in VIDEOS.iterdir() if p.suffix in (".avi", ".mp4"))[:n]
    return [(p, i) for i, p in enumerate(files)]


@needs_videos
def test_eval_clips_equal_numpy_and_are_deterministic():
    videos = real_videos()[:3]
    ds = clip_dataset(videos, training=False, frames=8, clips_per_video=3, batch_size=4,
                      with_video_index=True)
    x1, y1, i1 = (np.concatenate(a) for a in zip(*[[t.numpy() for t in b] for b in ds]))
    x2 = np.concatenate([b[0].numpy() for b in ds])
    np.testing.assert_array_equal(x1, x2)  # the same clips every time
    assert x1.shape == (9, 8, 112, 112, 3) and x1.dtype == np.float32
    np.testing.assert_array_equal(i1, np.repeat([0, 1, 2], 3))
    np.testing.assert_array_equal(y1, np.repeat([v[1] for v in videos], 3))
    for k, (path, _) in enumerate(videos):
        frames = decode_all(path)
        starts = np.linspace(0, len(frames) - 8, 3).round().astype(int)  # uniformly spaced
        for j, start in enumerate(starts):
            x = bilinear_resize(frames[start:start + 8], (128, 171))
            x = x[:, 8:120, 30:142]  # torchvision's center crop of 128x171: rows 8, columns 30
            np.testing.assert_allclose(x1[3 * k + j], (x - MEAN) / STD, atol=1e-4)


@needs_videos
def test_training_augmentation_equals_numpy(monkeypatch):
    drawn = {}
    real_params = pipeline.augmentation_params

    def recording(rng, num_frames, *args):
        params = real_params(rng, num_frames, *args)
        drawn.setdefault(num_frames, []).append(params)
        return params

    monkeypatch.setattr(pipeline, "augmentation_params", recording)
    videos = real_videos()
    ds = clip_dataset(videos, training=True, frames=8, stride=2, batch_size=2, seed=7,
                      scale_jitter=(128, 150), num_parallel_calls=1)
    clips = {int(y): x for xb, yb in ds for x, y in zip(xb.numpy(), yb.numpy())}
    assert sorted(clips) == [label for _, label in videos]  # one clip per video per epoch
    for path, label in videos:
        frames = decode_all(path)
        (start, size, top, left, flipped), = drawn[len(frames)]  # frame counts are distinct
        assert 0 <= start <= len(frames) - 15 and 128 <= size[0] <= 150
        assert size[1] == round(size[0] * 171 / 128) and top <= size[0] - 112 and left <= size[1] - 112
        x = bilinear_resize(frames[start:start + 15:2], size)[:, top:top + 112, left:left + 112]
        if flipped:
            x = x[:, :, ::-1]
        np.testing.assert_allclose(clips[label], (x - MEAN) / STD, atol=1e-4)


@needs_videos
def test_training_is_reproducible_by_seed_and_varies_by_epoch():
    videos = real_videos(4)

    def epoch(ds):
        return np.concatenate([x.numpy() for x, _ in ds])

    a = clip_dataset(videos, training=True, frames=4, batch_size=4, seed=3)
    b = clip_dataset(videos, training=True, frames=4, batch_size=4, seed=3)
    first, second = epoch(a), epoch(a)
    np.testing.assert_array_equal(first, epoch(b))
    assert not np.array_equal(first, second)


def test_augmentation_params_stay_in_range():
    rng = np.random.default_rng(0)
    draws = [pipeline.augmentation_params(rng, 40, 16, 1, (240, 320), (128, 171), 112, None, True)
             for _ in range(400)]
    starts, sizes, tops, lefts, flips = zip(*draws)
    assert min(starts) == 0 and max(starts) == 24 and set(sizes) == {(128, 171)}
    assert max(tops) == 16 and max(lefts) == 59 and min(tops) == min(lefts) == 0
    assert 150 < sum(flips) < 250


def test_unreadable_videos_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.avi"
    write_video(good, rng.integers(0, 255, (12, 48, 64, 3), dtype=np.uint8))
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video at all")
    skipped = SkippedVideos()
    ds = clip_dataset([(good, 0), (bad, 1)], training=True, frames=4, resize=(40, 52), crop=32,
                      skipped=skipped)
    labels = [int(y) for _, yb in ds for y in yb.numpy()]
    assert labels == [0, 0] and len(skipped) == 1 and "bad.avi" in skipped.summary()  # replaced
    eval_labels = [int(y) for _, yb in clip_dataset([(bad, 1), (good, 0)], training=False, frames=4,
                                                     resize=None, crop=32, skipped=skipped) for y in yb]
    assert eval_labels == [0] * 10
    with pytest.raises(Exception, match="bad.avi"):
        list(clip_dataset([(bad, 1)], training=True, frames=4, resize=(40, 52), crop=32))


def test_shards_split_the_videos(tmp_path):
    videos = random_videos(tmp_path, 5, frames=6, size=(32, 32), seed=1)
    seen = [sorted(int(y) for _, yb in clip_dataset(videos, training=True, frames=2, resize=None,
                                                    crop=32, shard=(2, i)) for y in yb) for i in (0, 1)]
    assert seen == [[0, 2, 4], [1, 3]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        clip_dataset([], training=True)
    with pytest.raises(ValueError, match="cannot give 112-pixel crops"):
        clip_dataset([("a.avi", 0)], training=True, resize=(100, 133))
    with pytest.raises(ValueError, match=r"shard.*\(2, 2\)"):
        clip_dataset([("a.avi", 0)], training=True, shard=(2, 2))


FIT = """
import sys
import numpy as np
import keras
import keras_r21d
from keras_r21d.data import clip_dataset
videos = [(p, int(p.split("_")[-1][0])) for p in sys.argv[1:]]
train = clip_dataset(videos, training=True, frames=4, resize=(40, 52), crop=32, batch_size=2)
model = keras_r21d.get_model("r2plus1d_10", widths=(4, 4, 8, 8), stem_midplanes=3, classes=2,
                             input_shape=(4, 32, 32, 3))
model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
history = model.fit(train, epochs=2, verbose=0)
loss = history.history["loss"]
assert len(loss) == 2 and all(np.isfinite(loss)), loss
print("fit ok", keras.backend.backend(), loss)
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_model_fit_on_a_generated_dataset(tmp_path, backend):
    rng = np.random.default_rng(2)
    paths = []
    for k in range(4):
        path = tmp_path / f"clip{k}_{k % 2}.avi"
        write_video(path, rng.integers(0, 255, (10, 48, 64, 3), dtype=np.uint8))
        paths.append(str(path))
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    run = subprocess.run([sys.executable, "-c", FIT, *paths], env=env, capture_output=True, text=True,
                         timeout=600, cwd=pathlib.Path(__file__).parent)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"fit ok {backend}" in run.stdout


def test_epoch_datasets_are_rebuilt_exactly_and_resume_mid_epoch(tmp_path):
    videos = random_videos(tmp_path, 6, frames=12, seed=3)

    def epoch(e, start_batch=0):
        ds = clip_dataset(videos, training=True, frames=4, resize=(36, 36), crop=32, batch_size=2,
                          seed=5, epoch=e, start_batch=start_batch)
        return [(x.numpy(), y.numpy()) for x, y in ds]

    first = epoch(0)
    assert len(first) == 3 and sorted(np.concatenate([y for _, y in first])) == list(range(6))
    again = epoch(0)
    for (xa, ya), (xb, yb) in zip(first, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    resumed = epoch(0, start_batch=1)  # batches 1 and 2 of the same epoch
    assert len(resumed) == 2
    for (xa, ya), (xb, yb) in zip(first[1:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    other = epoch(1)
    assert not all(np.array_equal(ya, yb) and np.array_equal(xa, xb) for (xa, ya), (xb, yb) in zip(first, other))
