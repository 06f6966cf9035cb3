"""The built-in offline demo: the paper's argument in a few minutes on a CPU.

A procedurally generated dataset in the UCF101 layout (textured objects whose class is
the kind or direction of their motion, never their appearance; some pairs of classes
differ only by the order of their frames) goes through the real fine-tuning and
evaluation code. Small-width versions of f-R2D, R2D, R3D, MC3 and R(2+1)D are trained
from scratch, and a paper-style table compares them: networks that model time learn
the motion-order classes, f-R2D (per-frame 2D convolutions, time averaged at the end)
cannot do better than chance on them.
"""

import os
import pathlib
import tempfile
import time

from keras_r21d.data.synthetic import ORDER_PAIRS

DEMO_NETWORKS = ("fr2d_18", "r2d_18", "mc3_18", "r3d_18", "r2plus1d_18")
# A tenth of the paper's widths and 32x32 crops: 5 networks x 2 seeds train in minutes on 2 cores.
DEMO_WIDTHS = (8, 16, 32, 64)
DEMO_STEM_MIDPLANES = 6
METRICS = ("clip@1", "video@1", "order@1", "other@1")


def run_demo(output_dir=None, networks=DEMO_NETWORKS, seeds=2, frames=8, video_frames=16, size=40, crop=32,
             videos_per_class=36, epochs=10, batch_size=8, learning_rate=0.02, eval_clips=3, seed=0,
             progress=False, workers=None):
    """Generates the motion dataset, trains and evaluates each network `seeds` times, prints the table.

    The runs are independent, so they go to `workers` processes at once (default: one
    per core, at most 4), each with its share of the cores: much of a short run is
    single-threaded Python (tracing the training step), which another run's training
    then overlaps.

    Args:
        output_dir: where the dataset and the runs go (default: a temporary folder).
        networks: registry names to compare (built at `DEMO_WIDTHS`).
        seeds: training runs per network (seeds `seed`, `seed + 1`, ...: initialisation,
            clip order and crops differ); the table gives their mean and spread.
        frames: clip length; `video_frames`: length of the generated videos.
        size: side of the generated videos; `crop`: side of the training crops.
        videos_per_class, epochs, batch_size, learning_rate: the experiment's size.
        eval_clips: clips per video of the video-level evaluation.
        seed: seed of the dataset, and the first training seed.
        progress: Keras progress bars (a line per epoch is always printed).
        workers: processes training at once (1: all in this process).

    Returns:
        list of dicts, one per network: params, macs, and for each of clip@1,
        video@1, `order@1` (on the videos of the motion-order classes whose pair was
        recognised, the share given the right order: chance is 50%) and `other@1`
        (video@1 on the other classes) the list over seeds, plus `<metric>_mean` and
        `<metric>_std`.
    """
    import numpy as np

    from keras_r21d.applications import get_model
    from keras_r21d.data.synthetic import make_motion_dataset
    from keras_r21d.models import display_name
    from keras_r21d.models.complexity import count_macs, count_params

    start = time.time()
    root = pathlib.Path(output_dir or tempfile.mkdtemp(prefix="keras_r21d_demo_"))
    data = root / "motion"
    _say(start, f"generating the motion dataset in {data} ...")
    summary = make_motion_dataset(data, videos_per_class=videos_per_class, frames=video_frames,
                                  size=(size, size), seed=seed)
    names = summary["classes"]
    jobs = [dict(name=name, run_seed=seed + run, label=f"{display_name(name)} seed {run + 1}/{seeds}")
            for name in networks for run in range(seeds)]
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or min(cores, 4), len(jobs)))
    _say(start, f"{summary['videos']} videos of {len(names)} motion classes (UCF101 layout; split 1: "
                f"{summary['counts'][1]['train']} train, {summary['counts'][1]['test']} test); classes told apart "
                f"only by frame order: {list(ORDER_PAIRS)}. Training {len(networks)} network(s) x {seeds} seed(s), "
                f"{epochs} epochs each, {workers} at a time.")
    common = dict(root=str(root), names=names, frames=frames, crop=crop, epochs=epochs, batch_size=batch_size,
                  learning_rate=learning_rate, eval_clips=eval_clips, progress=progress, start=start,
                  threads=max(1, cores // workers) if workers > 1 else None)
    if workers == 1:
        results = [_train_one(job, common) for job in jobs]
    else:
        import concurrent.futures
        import multiprocessing

        # spawn: a fresh interpreter per worker (TensorFlow's runtime does not survive fork).
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_train_one, jobs, [common] * len(jobs)))
    rows = []
    for name in networks:
        sized = get_model(name, input_shape=(frames, crop, crop, 3), classes=len(names), widths=DEMO_WIDTHS,
                          stem_midplanes=DEMO_STEM_MIDPLANES)
        runs = [r for job, r in zip(jobs, results) if job["name"] == name]
        row = {"network": display_name(name), "name": name, "params": count_params(sized),
               "macs": count_macs(sized), "seeds": [r["seed"] for r in runs]}
        for metric in METRICS:
            row[metric] = [r[metric] for r in runs]
            row[f"{metric}_mean"] = float(np.mean(row[metric]))
            row[f"{metric}_std"] = float(np.std(row[metric]))
        rows.append(row)
    print(format_demo_table(rows, frames, crop, len(names), eval_clips, seeds), flush=True)
    _say(start, "done")
    return rows


def _say(start, text):
    print(f"[{time.time() - start:5.0f} s] {text}", flush=True)


def _train_one(job, common):
    """One (network, seed) run of the demo, with the real `finetune`; returns its metrics."""
    import keras
    import numpy as np

    from keras_r21d.training import finetune

    if common["threads"] and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(common["threads"])
    name, run_seed, label, start = job["name"], job["run_seed"], job["label"], common["start"]
    names, epochs, frames = common["names"], common["epochs"], common["frames"]
    data = pathlib.Path(common["root"]) / "motion"
    _say(start, f"{label}: training")

    def epoch_line(epoch, logs):
        _say(start, f"{label} epoch {epoch + 1}/{epochs}: loss {logs['loss']:.3f}, "
                    f"train accuracy {100 * logs['accuracy']:.0f}%")

    result = finetune(
        dataset="ucf101", root=data, split=1, splits_dir=data / "ucfTrainTestlist", model=name,
        weights=None, frames=frames, resize=None, crop=common["crop"], batch_size=common["batch_size"],
        epochs=epochs, flip=False,  # a horizontal flip would turn MoveLeft into MoveRight
        learning_rate=common["learning_rate"], warmup_epochs=1,
        output_dir=pathlib.Path(common["root"]) / "runs" / f"{name}_seed{run_seed}", checkpoint_every=None,
        validate=False, eval_clips=common["eval_clips"], seed=run_seed, progress=common["progress"],
        model_kwargs=dict(widths=DEMO_WIDTHS, stem_midplanes=DEMO_STEM_MIDPLANES,
                          **({"frames": frames} if name.startswith("r2d") else {})),
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=epoch_line)], quiet=True,
    )
    confusion = np.asarray(result["metrics"]["confusion"])
    order = [names.index(c) for pair in ORDER_PAIRS for c in pair]
    others = [i for i in range(len(names)) if i not in order]
    values = {"seed": run_seed, "clip@1": result["metrics"]["clip@1"], "video@1": result["metrics"]["video@1"],
              "order@1": order_accuracy(confusion, [(names.index(a), names.index(b)) for a, b in ORDER_PAIRS]),
              "other@1": float(np.trace(confusion[others][:, others]) / confusion[others].sum())}
    _say(start, f"{label}: video@1 {100 * values['video@1']:.1f}%, order (pairs) {100 * values['order@1']:.1f}%")
    return values


def order_accuracy(confusion, pairs):
    """Among videos of a pair's classes predicted as one of the pair, the share with the
    right one: whether the network tells a motion from the same motion played backwards."""
    right = sum(confusion[a, a] + confusion[b, b] for a, b in pairs)
    within = sum(confusion[a, a] + confusion[a, b] + confusion[b, a] + confusion[b, b] for a, b in pairs)
    return float(right / within) if within else float("nan")


def _mean_std(row, metric):
    return f"{100 * row[metric + '_mean']:.1f} ± {100 * row[metric + '_std']:.1f}"


def format_demo_table(rows, frames, crop, classes, eval_clips, seeds):
    widths = (12, 9, 7, 12, 12, 13, 13)
    lines = [
        "",
        f"Motion dataset, {classes} classes, trained from scratch; input {frames}x{crop}x{crop}; video@1 averages "
        f"{eval_clips} clips per video; mean ± standard deviation over {seeds} seed(s), in %.",
        f"| {'network':<12} | {'params':>9} | {'MMAC':>7} | {'clip@1':>12} | {'video@1':>12} | "
        f"{'order (pairs)':>13} | {'other classes':>13} |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['network']:<12} | {r['params']:>9,} | {r['macs'] / 1e6:>7.1f} | {_mean_std(r, 'clip@1'):>12} | "
            f"{_mean_std(r, 'video@1'):>12} | {_mean_std(r, 'order@1'):>13} | {_mean_std(r, 'other@1'):>13} |")
    lines.append(f"order (pairs): videos of {', '.join('/'.join(p) for p in ORDER_PAIRS)} given the right one "
                 "of their pair, whose two classes are each other played backwards (chance 50%); "
                 f"chance over all classes {100 / classes:.1f}%.")
    return "\n".join(lines)
