"""The tf.data clip pipeline: decoded, augmented clips that `model.fit` consumes.

Training (the paper's recipe, section 4.1): one clip per video per epoch at a random
position (temporal jitter), frames resized to 128x171 (or, with `scale_jitter`, to a
random height in a range at the same aspect), a random 112x112 crop, a random
horizontal flip. Evaluation: `clips_per_video` uniformly spaced clips per video, center
crop; always the same clips. Clips are normalised as the Kinetics checkpoints expect
(REFERENCE section 4), so the output feeds the pretrained networks directly.

Decoding runs in parallel tf.data workers (PyAV releases the GIL while FFmpeg
decodes). The dataset is plain TensorFlow, so `model.fit` takes it on every Keras
backend.
"""

import logging
import threading

import numpy as np

from keras_r21d.data.preprocessing import CROP, KINETICS_MEAN, KINETICS_STD, RESIZE, resize_crop_numpy

log = logging.getLogger("keras_r21d")


class SkippedVideos:
    """Collects the videos a dataset skipped because they could not be decoded.

    Pass one to `clip_dataset(..., skipped=...)`; after an epoch, `len(skipped)` and
    `skipped.summary()` say which videos were left out and why.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.reasons = {}

    def add(self, path, reason):
        with self._lock:
            first = path not in self.reasons
            self.reasons[path] = reason
        if first:
            log.warning("Skipping unreadable video %s: %s", path, reason)

    def __len__(self):
        return len(self.reasons)

    def summary(self):
        if not self.reasons:
            return "No video was skipped."
        lines = [f"{len(self.reasons)} unreadable videos were skipped:"]
        lines += [f"  {path}: {reason}" for path, reason in sorted(self.reasons.items())[:20]]
        if len(self.reasons) > 20:
            lines.append(f"  ... and {len(self.reasons) - 20} more")
        return "\n".join(lines)


def augmentation_params(rng, num_frames, frames, stride, frame_size, resize, crop, scale_jitter, flip):
    """Random clip start, resize, crop corner and flip for one training clip.

    Draws, in this order: the start in [0, num_frames - span], the resized height
    (with `scale_jitter`), the crop's top, its left, the flip.
    """
    span = (frames - 1) * stride + 1
    start = int(rng.integers(0, max(num_frames - span, 0) + 1))
    if scale_jitter is not None:
        height = int(rng.integers(scale_jitter[0], scale_jitter[1] + 1))
        resize = (height, round(height * resize[1] / resize[0]))
    resize = resize or frame_size
    top = int(rng.integers(0, resize[0] - crop + 1))
    left = int(rng.integers(0, resize[1] - crop + 1))
    flipped = bool(flip and rng.random() < 0.5)
    return start, tuple(resize), top, left, flipped


def normalize(x, mean=KINETICS_MEAN, std=KINETICS_STD):
    """0..255 RGB -> the Kinetics normalisation of REFERENCE section 4."""
    return (x - np.float32(255) * np.asarray(mean, "float32")) / (np.float32(255) * np.asarray(std, "float32"))


def center_offsets(size, crop):
    from keras_r21d.data.preprocessing import _crop_offset

    return tuple(_crop_offset(s, c) for s, c in zip(size, (crop, crop)))


def epoch_order(labels, seed, epoch, shuffle=True, balanced=False):
    """Indices of the videos one training epoch visits, in order; depends only on `(seed, epoch)`.

    shuffle: a permutation (each video once); else the list's order.
    balanced: as many draws as videos, with replacement, each video drawn with probability
        `1 / (classes present * videos of its class)`: every class present is equally likely
        at every draw, so rare classes are seen as often as common ones (their videos
        repeat, with new augmentation) and the epoch keeps its number of batches.
    """
    rng = np.random.default_rng([seed, epoch])
    labels = np.asarray(labels)
    if balanced:
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        p = 1.0 / (len(classes) * counts[inverse])
        return rng.choice(len(labels), size=len(labels), replace=True, p=p / p.sum())
    return rng.permutation(len(labels)) if shuffle else np.arange(len(labels))


def clip_dataset(
    videos,
    training,
    frames=16,
    stride=1,
    batch_size=8,
    clips_per_video=10,
    resize=RESIZE,
    crop=CROP,
    mean=KINETICS_MEAN,
    std=KINETICS_STD,
    scale_jitter=None,
    flip=True,
    shuffle=True,
    balanced=False,
    seed=0,
    shard=None,
    skipped=None,
    num_parallel_calls=None,
    with_video_index=False,
    epoch=None,
    start_batch=0,
):
    """A `tf.data.Dataset` of `(clips, labels)` batches for `model.fit` / `evaluate`.

    Args:
        videos: list of `(video_path, label)` (e.g. from `load_split`).
        training: True: one randomly placed, augmented clip per video, videos
            shuffled every epoch. False: `clips_per_video` uniformly spaced clips
            per video, center crop, in order (deterministic).
        frames: clip length T.
        stride: temporal stride between the clip's frames.
        batch_size: clips per batch (the last batch may be smaller).
        clips_per_video: clips per video in evaluation (the paper: 10).
        resize: `(H, W)` the frames are resized to before cropping (None: keep).
        crop: side of the square crop.
        mean, std: per-channel normalisation of 0..1 RGB (Kinetics' by default).
        scale_jitter: training only, `(min, max)` height of the resize, drawn per
            clip (the width keeps `resize`'s aspect); None: no scale jitter.
        flip: training only, random horizontal flips.
        shuffle: training only, reshuffle the videos every epoch.
        balanced: training with `epoch` only: a class-balanced sampler, see
            `epoch_order` (for small or skewed datasets).
        seed: seed of the shuffle and of the augmentation.
        shard: `(num_shards, index)`: keep only every num_shards-th video from
            `index`, for one process of a multi-process run.
        skipped: a `SkippedVideos` that collects unreadable videos; they are
            skipped (and counted) instead of failing the epoch: in training the
            next readable video of the list takes the place of an unreadable one,
            so an epoch keeps its number of batches. None: an unreadable video
            raises.
        num_parallel_calls: decoding workers (default: tf.data.AUTOTUNE).
        with_video_index: evaluation: also yield each clip's index in `videos`,
            to average the clips of a video (video-level accuracy).
        epoch: training only. None: the dataset is reshuffled and re-augmented at
            every iteration (plain `model.fit(..., epochs=n)`). An int: a one-epoch
            dataset whose order and augmentation depend only on `(seed, epoch)`, so
            that an interrupted epoch can be rebuilt exactly (`keras_r21d.finetune`).
        start_batch: with `epoch`, skip the first batches of that epoch without
            decoding them (resuming mid-epoch).

    Returns:
        `tf.data.Dataset` of `(float32 clips (B, T, crop, crop, 3), int32 labels (B,))`,
        plus int32 video indices with `with_video_index`.
    """
    import tensorflow as tf

    from keras_r21d.data.video import VideoReadError, count_frames, read_clip, uniform_clips

    if not videos:
        raise ValueError("`videos` is empty: nothing to build a dataset from.")
    if frames <= 0 or stride <= 0 or batch_size <= 0 or clips_per_video <= 0:
        raise ValueError(
            f"frames, stride, batch_size and clips_per_video must be positive; received {frames}, "
            f"{stride}, {batch_size}, {clips_per_video}."
        )
    for size in (resize or ()) + ((scale_jitter[0],) if scale_jitter else ()):
        if size < crop:
            raise ValueError(f"Frames resized to {size} pixels cannot give {crop}-pixel crops.")
    paths = [str(path) for path, _ in videos]
    labels = np.asarray([label for _, label in videos], "int32")
    indices = np.arange(len(videos), dtype="int32")
    if shard is not None:
        num_shards, shard_index = shard
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"`shard` must be (num_shards, index) with 0 <= index < num_shards; received {shard}.")
        paths, labels, indices = paths[shard_index::num_shards], labels[shard_index::num_shards], \
            indices[shard_index::num_shards]
    if balanced and (epoch is None or not training):
        raise ValueError("balanced=True draws each epoch's videos from (seed, epoch): it needs training=True "
                         "and an `epoch` (as keras_r21d.finetune passes).")
    if epoch is not None and training:
        # The epoch's order and per-video random streams follow from (seed, epoch) alone.
        order = epoch_order(labels, seed, epoch, shuffle, balanced)
        # Each draw's augmentation stream: keyed by the video, and by its position when a video
        # can be drawn twice (balanced), so that repeats get different crops.
        streams = [[seed, epoch, int(indices[i])] + ([position] if balanced else [])
                   for position, i in enumerate(order)][start_batch * batch_size:]
        order = order[start_batch * batch_size:]
        paths, labels, indices = [paths[i] for i in order], labels[order], indices[order]
        if not paths:
            raise ValueError(f"start_batch={start_batch} is past the end of the epoch.")
    output = (frames, crop, crop, 3)

    def failed(path, error):
        if skipped is None:
            raise error
        skipped.add(path, str(error))

    def train_clip(position, element_seed):
        # An unreadable video is replaced by the next readable one of the list, so every
        # epoch has exactly its number of batches (what Keras's step counting expects).
        rng = np.random.default_rng(int(element_seed) & 0x7FFFFFFFFFFFFFFF)
        for offset in range(len(paths)):
            k = (int(position) + offset) % len(paths)
            try:
                num_frames = count_frames(paths[k])
                # The frame size matters only without a resize: decode a frame for it only then.
                frame_size = None if resize or scale_jitter else read_clip(paths[k], 0, 1).shape[1:3]
                start, size, top, left, flipped = augmentation_params(
                    rng, num_frames, frames, stride, frame_size, resize, crop, scale_jitter, flip)
                clip = read_clip(paths[k], start, frames, stride)
            except (VideoReadError, ValueError) as error:
                failed(paths[k], error)
                continue
            x = resize_crop_numpy(clip, size, top, left, (crop, crop))
            if flipped:
                x = x[:, :, ::-1]
            return normalize(x, mean, std), labels[k]
        raise VideoReadError(f"None of the {len(paths)} videos could be read; see the log.")

    def eval_clips(path, label, index):
        path = path.decode()
        try:
            clips = uniform_clips(path, frames, clips_per_video, stride)
        except (VideoReadError, ValueError) as error:
            failed(path, error)
            empty = np.zeros((0,) + output, "float32")
            return empty, np.zeros(0, "int32"), np.zeros(0, "int32")
        size = resize or clips[0].shape[1:3]
        top, left = center_offsets(size, crop)
        x = np.stack([normalize(resize_crop_numpy(c, size, top, left, (crop, crop)), mean, std) for c in clips])
        return x, np.full(len(clips), label, "int32"), np.full(len(clips), index, "int32")

    def load_train(position, random):
        return tf.numpy_function(train_clip, [position, random], (tf.float32, tf.int32))

    def load_eval(path, label, index):
        return tf.numpy_function(eval_clips, [path, label, index], (tf.float32, tf.int32, tf.int32))

    def decoded(x, label, *rest):
        return (tf.ensure_shape(x, output), tf.ensure_shape(label, ()), *rest)

    parallel = num_parallel_calls or tf.data.AUTOTUNE
    if training:
        ds = tf.data.Dataset.range(len(paths))
        if epoch is None:
            if shuffle:
                ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
            # One random number per element, a new stream every epoch, reproducible by seed.
            randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        else:
            randoms = tf.data.Dataset.from_tensor_slices(
                np.asarray([np.random.SeedSequence(key).generate_state(1)[0] for key in streams], "int64"))
        ds = tf.data.Dataset.zip(ds, randoms).map(load_train, num_parallel_calls=parallel, deterministic=True)
        # Checked at run time: an epoch that came out short would fail, not end early.
        ds = ds.map(decoded).apply(tf.data.experimental.assert_cardinality(len(paths)))
    else:
        ds = tf.data.Dataset.from_tensor_slices((paths, labels, indices))
        ds = ds.map(load_eval, num_parallel_calls=parallel, deterministic=True).unbatch().map(decoded)
        if not with_video_index:
            ds = ds.map(lambda x, label, _: (x, label))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
