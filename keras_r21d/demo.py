"""The built-in offline demo: the paper's argument in a few minutes on a CPU.

A procedurally generated dataset in the UCF101 layout (textured objects whose class is
the kind or direction of their motion, never their appearance; some pairs of classes
differ only by the order of their frames) goes through the real fine-tuning and
evaluation code. Small-width versions of f-R2D, R2D, R3D, MC3 and R(2+1)D are trained
from scratch, and a paper-style table compares them: networks that model time learn
the motion-order classes, f-R2D (per-frame 2D convolutions, time averaged at the end)
cannot do better than chance on them.
"""

import pathlib
import tempfile

from keras_r21d.data.synthetic import ORDER_PAIRS

DEMO_NETWORKS = ("fr2d_18", "r2d_18", "mc3_18", "r3d_18", "r2plus1d_18")
# A tenth of the paper's widths: the demo trains in minutes on 2 cores.
DEMO_WIDTHS = (8, 16, 32, 64)
DEMO_STEM_MIDPLANES = 6


def run_demo(output_dir=None, networks=DEMO_NETWORKS, frames=8, size=64, crop=56, videos_per_class=60,
             epochs=10, batch_size=8, learning_rate=0.02, eval_clips=3, seed=0, progress=False):
    """Generates the motion dataset, trains and evaluates each network, prints the table.

    Args:
        output_dir: where the dataset and the runs go (default: a temporary folder).
        networks: registry names to compare (built at `DEMO_WIDTHS`).
        frames: clip length.
        size: side of the generated videos; `crop`: side of the training crops.
        videos_per_class, epochs, batch_size, learning_rate: the experiment's size.
        eval_clips: clips per video of the video-level evaluation.
        seed: seed of the dataset and of the training.
        progress: Keras progress bars.

    Returns:
        list of dicts, one per network: params, macs, clip@1, video@1, `order@1`
        (on the videos of the motion-order classes whose pair was recognised, the
        share given the right order: chance is 50%) and `other@1` (video@1 on
        the other classes).
    """
    import numpy as np

    from keras_r21d.complexity import count_macs, count_params
    from keras_r21d.data.synthetic import make_motion_dataset
    from keras_r21d.models import display_name, get_model
    from keras_r21d.training import finetune

    root = pathlib.Path(output_dir or tempfile.mkdtemp(prefix="keras_r21d_demo_"))
    data = root / "motion"
    summary = make_motion_dataset(data, videos_per_class=videos_per_class, size=(size, size), seed=seed)
    names = summary["classes"]
    order_classes = [names.index(c) for pair in ORDER_PAIRS for c in pair]
    print(f"Generated {summary['videos']} videos of {len(names)} motion classes in {data} "
          f"(UCF101 layout); classes told apart only by frame order: {list(ORDER_PAIRS)}.")
    rows = []
    for name in networks:
        settings = dict(widths=DEMO_WIDTHS, stem_midplanes=DEMO_STEM_MIDPLANES)
        sized = get_model(name, input_shape=(frames, crop, crop, 3), classes=len(names), **settings)
        result = finetune(
            dataset="ucf101", root=data, split=1, splits_dir=data / "ucfTrainTestlist", model=name,
            weights=None, frames=frames, resize=None, crop=crop, batch_size=batch_size, epochs=epochs,
            flip=False,  # a horizontal flip would turn MoveLeft into MoveRight
            learning_rate=learning_rate, warmup_epochs=1, output_dir=root / "runs" / name,
            checkpoint_every=None, eval_clips=eval_clips, seed=seed, progress=progress,
            model_kwargs=dict(settings, **({"frames": frames} if name.startswith("r2d") else {})),
        )
        metrics = result["metrics"]
        confusion = np.asarray(metrics["confusion"])
        others = [i for i in range(len(names)) if i not in order_classes]
        rows.append({
            "network": display_name(name), "name": name, "params": count_params(sized),
            "macs": count_macs(sized), "clip@1": metrics["clip@1"], "video@1": metrics["video@1"],
            "order@1": order_accuracy(confusion, [(names.index(a), names.index(b)) for a, b in ORDER_PAIRS]),
            "other@1": float(np.trace(confusion[others][:, others]) / confusion[others].sum()),
        })
    print(format_demo_table(rows, frames, crop, len(names), eval_clips))
    return rows


def order_accuracy(confusion, pairs):
    """Among videos of a pair's classes predicted as one of the pair, the share with the
    right one: whether the network tells a motion from the same motion played backwards."""
    right = sum(confusion[a, a] + confusion[b, b] for a, b in pairs)
    within = sum(confusion[a, a] + confusion[a, b] + confusion[b, a] + confusion[b, b] for a, b in pairs)
    return float(right / within) if within else float("nan")


def format_demo_table(rows, frames, crop, classes, eval_clips):
    lines = [
        "",
        f"Motion dataset, {classes} classes, trained from scratch; input {frames}x{crop}x{crop}; "
        f"video@1 averages {eval_clips} clips per video.",
        f"| {'network':<12} | {'params':>9} | {'MMAC':>7} | {'clip@1':>7} | {'video@1':>7} | "
        f"{'order (pairs)':>13} | {'other classes':>13} |",
        "|" + "|".join("-" * (w + 2) for w in (12, 9, 7, 7, 7, 13, 13)) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['network']:<12} | {r['params']:>9,} | {r['macs'] / 1e6:>7.1f} | {100 * r['clip@1']:>6.1f}% | "
            f"{100 * r['video@1']:>6.1f}% | {100 * r['order@1']:>12.1f}% | {100 * r['other@1']:>12.1f}% |")
    lines.append(f"order (pairs): videos of {', '.join('/'.join(p) for p in ORDER_PAIRS)} given the right one "
                 "of their pair, whose two classes are each other played backwards (chance 50%); "
                 f"chance over all classes {100 / classes:.1f}%.")
    return "\n".join(lines)
