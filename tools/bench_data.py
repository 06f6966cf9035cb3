"""Benchmark: the tf.data clip pipeline against the training speed of R(2+1)D-18.

    python tools/bench_data.py [VIDEO_DIR] [--batch-size 4] [--frames 16] [--json OUT]

Decodes and augments the videos of VIDEO_DIR (default ../shared/data/videos) and times a
training step of the network at the same batch size, in one run; prints a table.
"""

import itertools
import os
import sys
import time

from keras_r21d.machine import cpu_name


def _clips_per_second(batches, warmup, measured):
    """Clips/s over `measured` batches of an iterator, after `warmup` batches."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    clips, start = 0, time.perf_counter()
    for batch in itertools.islice(iterator, measured):
        clips += len(batch[1])
    return clips / (time.perf_counter() - start)


def data_throughput(videos, model_name="r2plus1d_18", frames=16, batch_size=4, batches=6,
                    train_steps=3, midplanes="per_block"):
    """Measures, in one run, the training pipeline against the model it feeds.

    Args:
        videos: list of `(video_path, label)`; cycled to fill the batches.
        model_name: the network whose training speed is the demand.
        frames: clip length (the pipeline's training augmentation, 112x112 crops).
        batch_size: clips per batch, the same for both sides.
        batches: pipeline batches timed (after one of warm-up).
        train_steps: training steps timed (after one of warm-up).
        midplanes: (2+1)D widths of the network (torchvision's by default).

    Returns:
        dict with `pipeline_clips_per_s`, `train_clips_per_s` (in-memory batches),
        `fit_clips_per_s` (model.fit fed by the pipeline), `ratio` (pipeline / train)
        and the settings.
    """
    import keras
    import numpy as np

    from keras_r21d.applications import get_model
    from keras_r21d.data.pipeline import clip_dataset

    needed = (batches + 1) * batch_size
    pool = list(itertools.islice(itertools.cycle(videos), max(needed, len(videos))))
    dataset = clip_dataset(pool, training=True, frames=frames, batch_size=batch_size, seed=0)
    pipeline = _clips_per_second(dataset, 1, batches)

    model = get_model(model_name, input_shape=(frames, 112, 112, 3), classes=101, midplanes=midplanes)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(batch_size, frames, 112, 112, 3)).astype("float32")
    y = np.zeros(batch_size, "int32")
    model.train_on_batch(x, y)  # warm-up: tracing
    start = time.perf_counter()
    for _ in range(train_steps):
        model.train_on_batch(x, y)
    train = train_steps * batch_size / (time.perf_counter() - start)

    # model.fit reading the pipeline: equals `train` when decoding never makes it wait.
    fit_data = clip_dataset(pool, training=True, frames=frames, batch_size=batch_size, seed=1).repeat()
    model.fit(fit_data, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(fit_data, steps_per_epoch=train_steps, epochs=1, verbose=0, shuffle=False)
    fit = train_steps * batch_size / (time.perf_counter() - start)
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "backend": keras.backend.backend(),
        "model": model_name, "frames": frames, "batch_size": batch_size, "videos": len(videos),
        "pipeline_clips_per_s": pipeline, "train_clips_per_s": train, "fit_clips_per_s": fit,
        "ratio": pipeline / train,
    }


def format_data_table(result):
    lines = [
        f"Machine: {result['cpu']}, {result['cores']} cores; Keras backend {result['backend']}.",
        f"{result['frames']}-frame clips, batch {result['batch_size']}, training augmentation, "
        f"{result['videos']} source videos.",
        "",
        f"| {'what':<52} | {'clips/s':>8} |",
        f"|{'-' * 54}|{'-' * 10}|",
        f"| {'tf.data pipeline alone (decode + augment)':<52} | {result['pipeline_clips_per_s']:>8.2f} |",
        f"| {result['model'] + ' training step, in-memory batches':<52} | {result['train_clips_per_s']:>8.2f} |",
        f"| {result['model'] + ' model.fit fed by the pipeline':<52} | {result['fit_clips_per_s']:>8.2f} |",
        "",
        f"Pipeline / training demand: {result['ratio']:.1f}x (goal: at least 2x).",
    ]
    return "\n".join(lines)


def main(argv=None):
    import argparse
    import json
    import pathlib

    from keras_r21d.applications import list_models
    from keras_r21d.cli import POSITIVE_INT
    from keras_r21d.data.splits import find_videos

    parser = argparse.ArgumentParser(prog="python tools/bench_data.py",
                                     description="clips/s of the data pipeline vs. the model's training")
    parser.add_argument("videos", nargs="?", default="../shared/data/videos", help="folder of videos")
    parser.add_argument("--model", default="r2plus1d_18", choices=list_models())
    parser.add_argument("--frames", type=POSITIVE_INT, default=16)
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=4)
    parser.add_argument("--batches", type=POSITIVE_INT, default=6, help="pipeline batches timed")
    parser.add_argument("--steps", type=POSITIVE_INT, default=3, help="training steps timed")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    files = find_videos([args.videos]) if pathlib.Path(args.videos).exists() else None
    if not files:
        print(f"bench_data: error: no video found in {args.videos!r} (it does not exist or holds no "
              "video); pass a folder of videos.", file=sys.stderr)
        return 2
    result = data_throughput([(path, 0) for path in files], model_name=args.model, frames=args.frames,
                             batch_size=args.batch_size, batches=args.batches, train_steps=args.steps)
    print(format_data_table(result))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
