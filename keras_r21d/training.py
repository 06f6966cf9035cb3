"""Fine-tuning: `keras_r21d.finetune`, behind `keras-r21d finetune`.

The paper's recipe (section 4.1 and the official fine-tuning scripts): random crops of
128x171 frames, random flips, consecutive frames with temporal jitter, SGD with
momentum, a warm-up, then a decaying learning rate; optionally train on short clips
and fine-tune on long ones ("train short, fine-tune long", section 4.4), which the
networks allow because they take any clip length.

Interruptions lose nothing: every `checkpoint_every` steps and at every epoch end the
run directory gets a checkpoint in `checkpoints/`, a pair named by the optimizer step:

- `step-<n>.weights.h5`: weights and optimizer state (with its step counter, hence the
  learning-rate schedule);
- `step-<n>.json`, its record, written last and atomically: the position (epoch,
  batches done), the sums behind the current epoch's metrics so far, the run's
  settings and their sha256, and the weights file's name and sha256.

A checkpoint without its record does not exist, so a kill between the two writes
resumes from the previous one. The last two are kept: a damaged newest one (digest
mismatch, truncated, missing) falls back to the one before, with a warning. A run is
resumed only with the settings it was started with (`_check_settings`). Each epoch's clip
order and augmentation follow from `(seed, epoch)`, so a resumed run rebuilds the
interrupted epoch and skips exactly the batches already trained on.
"""

import hashlib
import json
import math
import os
import pathlib
import time
import warnings

import keras
import numpy as np

from keras_r21d.fileio import sha256_of, write_json, write_text

CHECKPOINTS = "checkpoints"
KEEP = 2  # checkpoints kept: the newest and a fallback


def _settings_sha256(settings):
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def learning_rate_schedule(base, steps_per_epoch, epochs, warmup_epochs=1, schedule="cosine",
                           decay_every=10, decay=0.1):
    """A Keras schedule: linear warm-up, then cosine to 0, a step decay or constant.

    `schedule="step"` is the paper's (lr divided by 10 every `decay_every` epochs);
    "cosine" suits short fine-tuning runs. It is a function of the optimizer's step
    counter, so restoring the optimizer restores the schedule.
    """
    if schedule not in WarmupSchedule.KINDS:
        raise ValueError(f"Unknown schedule {schedule!r}; expected one of {WarmupSchedule.KINDS}.")
    warmup = int(warmup_epochs * steps_per_epoch)
    return WarmupSchedule(base, warmup, max(int(epochs * steps_per_epoch), warmup + 1), schedule,
                          decay_every * steps_per_epoch, decay)


@keras.saving.register_keras_serializable(package="keras_r21d")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over `warmup_steps`, then "cosine", "step" or "constant"."""

    KINDS = ("cosine", "step", "constant")

    def __init__(self, base, warmup_steps, total_steps, kind="cosine", decay_steps=1, decay=0.1):
        self.base, self.warmup_steps, self.total_steps = base, warmup_steps, total_steps
        self.kind, self.decay_steps, self.decay = kind, decay_steps, decay

    def __call__(self, step):
        from keras import ops

        step = ops.cast(step, "float32")
        ramp = self.base * (step + 1.0) / max(self.warmup_steps, 1)
        if self.kind == "cosine":
            progress = ops.minimum((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 1.0)
            rate = 0.5 * self.base * (1.0 + ops.cos(math.pi * progress))
        elif self.kind == "step":
            rate = self.base * ops.power(self.decay, ops.floor(step / self.decay_steps))
        else:
            rate = self.base + 0.0 * step
        return ops.where(step < self.warmup_steps, ramp, rate)

    def get_config(self):
        return {"base": self.base, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "kind": self.kind, "decay_steps": self.decay_steps, "decay": self.decay}


@keras.saving.register_keras_serializable(package="keras_r21d")
class SparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels with label smoothing, which Keras's sparse loss lacks:
    the target is `(1 - label_smoothing) * one_hot + label_smoothing / classes`."""

    def __init__(self, label_smoothing=0.0, name="sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        from keras import ops

        target = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), ops.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(target, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


class _HeadLearningRate:
    """An optimizer whose rate is multiplied by `head_multiplier` for the variables named in
    `head_variables` (paths); Keras optimizers have one rate for all. Decoupled weight decay
    keeps the base rate. Mixed into SGD and AdamW below."""

    def __init__(self, *args, head_variables=(), head_multiplier=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_variables, self.head_multiplier = list(head_variables), float(head_multiplier)

    def build(self, variables):
        super().build(variables)
        self._head = {self._get_variable_index(v) for v in variables if v.path in self.head_variables}
        if len(self._head) != len(self.head_variables):
            raise ValueError(f"The head's variables {self.head_variables} are not all trainable variables of "
                             "the model being trained.")

    def update_step(self, gradient, variable, learning_rate):
        if self._get_variable_index(variable) in self._head:
            learning_rate = learning_rate * self.head_multiplier
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "head_variables": self.head_variables,
                "head_multiplier": self.head_multiplier}


@keras.saving.register_keras_serializable(package="keras_r21d")
class HeadSGD(_HeadLearningRate, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with a learning-rate multiplier for the head (see `_HeadLearningRate`)."""


@keras.saving.register_keras_serializable(package="keras_r21d")
class HeadAdamW(_HeadLearningRate, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with a learning-rate multiplier for the head (see `_HeadLearningRate`)."""


def _optimizer(kind, learning_rate, momentum, weight_decay, model, head_multiplier):
    """SGD with momentum (the paper's; `kind` "sgd") or AdamW ("adam"), the rate of `model`'s
    head multiplied by `head_multiplier`."""
    head = dict(head_variables=[v.path for v in head_variables(model)], head_multiplier=head_multiplier) \
        if head_multiplier != 1 else {}
    if kind == "sgd":
        return (HeadSGD if head else keras.optimizers.SGD)(learning_rate, momentum=momentum,
                                                           weight_decay=weight_decay, **head)
    return (HeadAdamW if head else keras.optimizers.AdamW)(learning_rate, weight_decay=weight_decay, **head)


def head_variables(model):
    """The classifier's variables: the "fc" layer of a keras_r21d network, else the last layer with any."""
    named = [layer for layer in model.layers if layer.name == "fc"]
    candidates = named or [layer for layer in model.layers if layer.trainable_weights]
    if not candidates:
        raise ValueError(f"Model {model.name!r} has no trainable layer to call its head.")
    return candidates[-1].trainable_weights


def freeze(model, until=None, batch_norm=False):
    """Freezes the stem and the stages up to `until` ("conv1" ... "conv5"): their weights and
    their BN statistics stay as they are. `batch_norm`: also every BN layer of the model (its
    moving statistics, scale and shift; Keras runs a frozen BN layer in inference mode).
    Compile the model afterwards."""
    if until is not None:
        from keras_r21d.models.backbone import stage_layers

        stages = stage_layers(model)
        if until not in stages:
            raise ValueError(f"Cannot freeze until {until!r}: {model.name!r} has the stages {list(stages)} "
                             "(conv1 is the stem).")
        for stage, layers in stages.items():
            if int(stage[4:]) <= int(until[4:]):
                for layer in layers:
                    layer.trainable = False
    if batch_norm:
        # Keras has no public walk through nested layers; _flatten_layers is what Model uses.
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def class_weights(videos, num_classes, spec):
    """`model.fit`'s `class_weight` from `spec`: None, "balanced" (N / (K n_c) over the K classes
    present in `videos`, scikit-learn's rule: every class weighs the same in the loss), or a
    dict {class index: weight}."""
    if spec is None:
        return None
    if spec == "balanced":
        counts = np.bincount([label for _, label in videos], minlength=num_classes)
        present = np.count_nonzero(counts)
        return {c: float(len(videos) / (present * n)) if n else 1.0 for c, n in enumerate(counts)}
    if isinstance(spec, dict):
        weights = {int(c): float(w) for c, w in spec.items()}
        bad = [c for c, w in weights.items() if not 0 <= c < num_classes or not w >= 0]
        if not bad:
            return weights
    raise ValueError(f"class_weight must be None, 'balanced' or a dict of class index (0..{num_classes - 1}) to a "
                     f"weight >= 0; received {spec!r}.")


class _Checkpointer:
    """Writes the checkpoints of a run (see the module docstring); every process calls `save`."""

    def __init__(self, run_dir, every, cluster, steps_per_epoch, settings, resumed_from=None):
        self.dir = pathlib.Path(run_dir) / CHECKPOINTS
        self.every, self.cluster, self.steps_per_epoch, self.settings = every, cluster, steps_per_epoch, settings
        self.kept = [resumed_from] if resumed_from else []  # record names, oldest first
        self.dir.mkdir(parents=True, exist_ok=True)

    def save(self, model, epoch, batches_done):
        name = f"step-{epoch * self.steps_per_epoch + batches_done:09d}"
        weights = self.dir / f"{name}.weights.h5"
        if not _save_weights(model, weights, self.cluster):
            return
        # Mid-epoch, the metric variables hold the epoch's sums so far (loss x clips, clips, ...).
        metrics = {v.path: keras.ops.convert_to_numpy(v).tolist() for v in model.metrics_variables} \
            if batches_done else {}
        write_json(self.dir / f"{name}.json", {
            "epoch": epoch, "batches_done": batches_done, "metrics": metrics,
            "weights": weights.name, "sha256": sha256_of(weights),
            "settings": self.settings, "settings_sha256": _settings_sha256(self.settings), "time": time.time()})
        self.kept = [n for n in self.kept if n != name][-(KEEP - 1):] + [name]
        keep = {f"{n}{suffix}" for n in self.kept for suffix in (".json", ".weights.h5")}
        for path in self.dir.glob("step-*"):  # older checkpoints, and leftovers of interrupted saves
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def callback(self, epoch, first_batch, metrics=None):
        """Saves every `every` steps; adds `metrics` (a record's) to the epoch's after its first step."""
        checkpointer = self

        class Save(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == 0 and metrics:
                    # The interrupted epoch's sums before this run, so that its logs cover all its
                    # batches. Not at the epoch's start: the compiled metrics are built by the first
                    # step. Their variables are sums (loss x clips, hits, clips), so adding is exact.
                    variables = self.model.metrics_variables
                    if set(metrics) != {v.path for v in variables}:
                        raise ValueError(f"The checkpoint's metrics {sorted(metrics)} are not the model's "
                                         f"{sorted(v.path for v in variables)}.")
                    for v in variables:
                        v.assign(keras.ops.convert_to_numpy(v) + np.asarray(metrics[v.path], dtype=v.dtype))
                done = first_batch + batch + 1
                # The epoch's last step is saved by the epoch-end checkpoint, after validation.
                if checkpointer.every and done % checkpointer.every == 0 and done < checkpointer.steps_per_epoch:
                    checkpointer.save(self.model, epoch, done)

        return Save()


def _save_weights(model, path, cluster):
    """Writes `model`'s weights to `path` atomically; True on the process that wrote it.

    Every process must call it: in a multi-process JAX run, reading the weights is a
    collective operation. Only process 0 keeps its file.
    """
    tmp = path.parent / f".partial-process{cluster.process_id}.weights.h5"
    model.save_weights(tmp)
    if cluster.is_chief:
        os.replace(tmp, path)
    else:
        tmp.unlink()
    return cluster.is_chief


def _check_record(path):
    """What is wrong with the checkpoint whose record is `path`: (problem, None) or (None, record)."""
    try:
        record = json.loads(path.read_text())
        weights = path.parent / record["weights"]
        settings_intact = _settings_sha256(record["settings"]) == record["settings_sha256"]
        missing = sorted({"epoch", "batches_done", "metrics", "sha256"} - record.keys())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"unreadable record ({type(error).__name__}: {error})", None
    if missing:
        return f"damaged record (no {missing})", None
    if not settings_intact:
        return "its settings do not match their sha256", None
    if not weights.is_file():
        return f"its weights file {weights.name} is missing", None
    if sha256_of(weights) != record["sha256"]:
        return f"{weights.name} does not match the sha256 in the record (truncated or overwritten)", None
    return None, dict(record, path=path, weights=weights)


def _find_checkpoint(run_dir):
    """The record of `run_dir`'s newest intact checkpoint (with its `path`), or None if it has none.

    Damaged newer ones are skipped with a warning; if every one is damaged, an error names them.
    """
    run_dir = pathlib.Path(run_dir)
    records = sorted((run_dir / CHECKPOINTS).glob("step-*.json"), reverse=True)
    if not records and (run_dir / "state.json").is_file():
        raise ValueError(
            f"{run_dir} holds a checkpoint of an earlier keras-r21d (state.json, checkpoint.weights.h5) "
            "without the run's settings, so it cannot be checked before resuming. Finish that run with "
            "the version that started it, or train in another output directory.")
    damaged = []
    for path in records:
        problem, record = _check_record(path)
        if record is not None:
            if damaged:
                warnings.warn(f"Skipped damaged checkpoint(s): {'; '.join(damaged)}. Resuming from {path}.",
                              stacklevel=3)
            return record
        damaged.append(f"{path}: {problem}")
    if damaged:
        raise ValueError(f"No intact checkpoint in {run_dir / CHECKPOINTS}:\n  " + "\n  ".join(damaged) +
                         f"\nDelete {run_dir / CHECKPOINTS} to train from the start, or train in another "
                         "output directory.")
    return None


def _check_settings(record, settings):
    """Refuses to resume a run with other settings than it was started with: it would mix two runs."""
    if record["settings_sha256"] == _settings_sha256(settings):
        return
    saved = record["settings"]
    changes = [f"  {key}: {json.dumps(saved.get(key))} (saved) vs {json.dumps(settings.get(key))} (now)"
               for key in sorted(saved.keys() | settings.keys()) if saved.get(key) != settings.get(key)]
    run_dir = record["path"].parent.parent
    raise ValueError(
        f"{run_dir} holds a run started with other settings; resuming it would mix two trainings:\n"
        + "\n".join(changes) + f"\nResume it with the saved settings, or train in another output "
        f"directory (`output_dir`, -o/--output). Checkpoint: {record['path']}.")


def _videos_digest(videos):
    """The training list, as `"<count> videos, sha256 <digest>"`: paths relative to their common
    folder (a moved dataset still matches) and labels, in order."""
    paths = [os.path.abspath(path) for path, _ in videos]
    common = os.path.commonpath([os.path.dirname(p) for p in paths])
    listing = [[os.path.relpath(p, common), int(label)] for p, (_, label) in zip(paths, videos)]
    return f"{len(videos)} videos, sha256 {hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]}"


def _drop_epochs_from(csv_path, epoch):
    """Keeps metrics.csv's header and rows of the epochs before `epoch`: the rest are trained again."""
    if csv_path.is_file():
        header, *rows = csv_path.read_text().splitlines(keepends=True) or [""]
        firsts = [row.split(",", 1)[0] for row in rows]  # the epoch; not a number in a row cut short
        write_text(csv_path, header + "".join(row for row, first in zip(rows, firsts)
                                               if first.isdigit() and int(first) < epoch))


def _warn_onednn_bfloat16():
    if keras.backend.backend() == "tensorflow" and os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
        import logging

        logging.getLogger("keras_r21d").warning(
            "Mixed bfloat16 training on TensorFlow's oneDNN kernels gave NaN losses in some runs on CPUs "
            "without AMX (TF 2.21; see the README). If the loss turns NaN, run with TF_ENABLE_ONEDNN_OPTS=0 "
            "or train in float32.")


def finetune(
    dataset="ucf101",
    root=None,
    split=1,
    splits_dir=None,
    train_videos=None,
    val_videos=None,
    labels=None,
    model="r2plus1d_18",
    weights="kinetics400",
    frames=16,
    stride=1,
    resize=(128, 171),
    crop=112,
    flip=True,
    batch_size=8,
    epochs=8,
    long_frames=None,
    long_epochs=0,
    optimizer="sgd",
    learning_rate=1e-3,
    momentum=0.9,
    weight_decay=1e-4,
    warmup_epochs=1,
    schedule="cosine",
    mixed_precision=False,
    output_dir="runs/finetune",
    checkpoint_every=100,
    validate=True,
    eval_clips=10,
    seed=0,
    push_to_hub=None,
    progress=True,
    distributed=None,
    model_kwargs=None,
    callbacks=None,
    quiet=False,
    freeze_until=None,
    freeze_bn=False,
    dropout=0.0,
    label_smoothing=0.0,
    class_weight=None,
    balanced_sampling=False,
    head_lr_multiplier=1.0,
):
    """Fine-tunes a network of the zoo on a video dataset; resumes an interrupted run.

    Args:
        dataset: "ucf101", "hmdb51" (official splits) or "folder" (a folder per
            class under `root`); ignored when `train_videos` is given.
        root: the dataset's video folder.
        split: official split 1, 2 or 3.
        splits_dir: where the official split files are (default: beside root).
        train_videos, val_videos, labels: instead of a dataset, lists of
            `(path, label)` and the class names.
        model: registry name, or a built `keras.Model` (a keras_r21d network ends
            as a preset in preset/, any other model as model.keras).
        weights: pretrained weights for the backbone (preset, hf://, folder) or None.
        frames, stride: training clip length and temporal stride.
        resize, crop: frame size before cropping and the crop's side (the
            paper's 128x171 and 112; smaller for quick experiments).
        flip: random horizontal flips (off when left and right matter).
        batch_size, epochs: as usual; `epochs` at `frames`.
        long_frames, long_epochs: then `long_epochs` more epochs on clips of
            `long_frames` (the paper's train short, fine-tune long).
        optimizer: "sgd" (with `momentum`, the paper's) or "adam".
        learning_rate, weight_decay, warmup_epochs, schedule: see
            `learning_rate_schedule`.
        mixed_precision: build the network in mixed bfloat16 (float32 weights,
            bfloat16 computation); only for a `model` given by name.
        output_dir: the run directory: checkpoints/ (the last two), metrics.csv,
            history.json, tensorboard/, curves.png and the final preset in preset/.
            A run directory with a checkpoint is resumed, if the settings that decide
            the training are the same (else an error lists the differences).
        checkpoint_every: also checkpoint every this many steps (None: epoch ends only).
        validate: evaluate clip accuracy on `val_videos` (the split's test list)
            after every epoch.
        eval_clips: at the end, clip@1, video@1 and video@5 on `val_videos` with
            this many uniformly spaced clips per video (0: skip; skipped in
            multi-process runs).
        seed: seed of the clip order and augmentation.
        push_to_hub: "owner/repo" to upload the final preset to.
        progress: show Keras progress bars.
        distributed: None for one process; True, or a dict of `coordinator`,
            `num_processes`, `process_id` (else read from the environment), for
            `keras_r21d.distributed.setup`: each process trains on its shard of
            the videos with `batch_size` clips per step; process 0 writes the run
            directory.
        model_kwargs: extra `get_model` arguments (e.g. `widths` for small nets).
        callbacks: more Keras callbacks for `model.fit` (e.g. a progress line per
            epoch); `fit` runs once per epoch, so their epoch is absolute.
        quiet: do not print the final evaluation table (the caller reports it).
        freeze_until: freeze the stem and the stages up to this one ("conv1" for
            the stem alone ... "conv5"): their weights and BN statistics stay as
            loaded (kenshohara's --ft_begin_index). None: train everything.
        freeze_bn: keep every BN layer as loaded (statistics, scale and shift);
            for small datasets, whose batches give poor statistics.
        dropout: rate of a dropout layer before the classifier (a `model` given
            by name; mmaction2's R(2+1)D head uses 0.5).
        label_smoothing: the target puts this much probability uniformly over
            the classes.
        class_weight: None, "balanced" (weights N / (K n_c) computed from the
            training list) or a dict {class index: weight}, for skewed datasets.
        balanced_sampling: draw each epoch's videos so that every class is
            equally likely (rare classes repeat; `pipeline.epoch_order`).
        head_lr_multiplier: the classifier learns at this multiple of the
            learning rate (e.g. 10 for a new head on a pretrained network).
        All of these are recorded in the run's settings (when not at their
        defaults, so runs of earlier versions still resume).

    Returns:
        dict with `history` (per-epoch metrics), `preset` (directory) and `run_dir`.
    """
    import keras

    from keras_r21d.applications import get_model
    from keras_r21d.data.pipeline import SkippedVideos, clip_dataset
    from keras_r21d.distributed import Cluster, setup
    from keras_r21d.models import VideoResNet, registered_name
    from keras_r21d.presets.files import save_preset

    cluster = Cluster() if not distributed else setup(**(distributed if isinstance(distributed, dict) else {}))
    shard = cluster.shard
    run_dir = pathlib.Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if train_videos is None:
        from keras_r21d.data.splits import class_names, find_splits_dir, folder_dataset, load_split

        if dataset == "folder":
            train_videos, labels = folder_dataset(root)
            val_videos = val_videos or []
        else:
            splits_dir = find_splits_dir(dataset, root, splits_dir)
            train_videos = load_split(dataset, root, split=split, subset="train", splits_dir=splits_dir)
            val_videos = load_split(dataset, root, split=split, subset="test", splits_dir=splits_dir)
            labels = class_names(dataset, splits_dir=splits_dir)
    if not train_videos:
        raise ValueError("No training video: check `root`, `dataset` and `split`.")
    num_classes = len(labels) if labels else 1 + max(label for _, label in train_videos)
    total_epochs = epochs + (long_epochs if long_frames else 0)
    steps_per_epoch = math.ceil(len(train_videos[shard[1]::shard[0]] if shard else train_videos) / batch_size)

    if push_to_hub and not isinstance(model, (str, VideoResNet)):
        raise ValueError(f"push_to_hub uploads a preset, which needs a keras_r21d network; {model.name!r} is a "
                         f"{type(model).__name__}. Leave push_to_hub out (the run saves model.keras).")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"Unknown optimizer {optimizer!r}; expected 'sgd' or 'adam'.")
    if dropout and not isinstance(model, str):
        raise ValueError(f"dropout={dropout} adds a layer to a network built by name; {model.name!r} is already "
                         "built. Build it with the dropout (keras_r21d.get_model(name, dropout=...)), or give "
                         "`model` by name.")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1); received {label_smoothing!r}.")
    if not head_lr_multiplier > 0:
        raise ValueError(f"head_lr_multiplier must be > 0; received {head_lr_multiplier!r}.")
    fit_class_weight = class_weights(train_videos, num_classes, class_weight)
    model_name = model if isinstance(model, str) else \
        (isinstance(model, VideoResNet) and registered_name(model.get_config())) or model.name
    # What decides the training trajectory; a run is resumed only with the same (the output
    # paths, logging, validation and checkpoint frequency may change).
    settings = json.loads(json.dumps({
        "model": model_name, "model_kwargs": model_kwargs or {}, "weights": weights,
        "mixed_precision": mixed_precision, "train_videos": _videos_digest(train_videos),
        "classes": num_classes, "frames": frames, "stride": stride, "resize": resize, "crop": crop,
        "flip": flip, "batch_size": batch_size, "epochs": epochs, "long_frames": long_frames,
        "long_epochs": long_epochs, "optimizer": optimizer, "learning_rate": learning_rate,
        "momentum": momentum, "weight_decay": weight_decay, "warmup_epochs": warmup_epochs,
        "schedule": schedule, "seed": seed, "processes": cluster.num_processes,
        # The fine-tuning controls, only where set: runs of versions without them still resume.
        **{key: value for key, value, default in (
            ("freeze_until", freeze_until, None), ("freeze_bn", freeze_bn, False), ("dropout", dropout, 0.0),
            ("label_smoothing", label_smoothing, 0.0), ("class_weight", class_weight, None),
            ("balanced_sampling", balanced_sampling, False), ("head_lr_multiplier", head_lr_multiplier, 1.0),
        ) if value != default},
    }, default=str))  # as a record stores them: tuples as lists
    record = _find_checkpoint(run_dir)
    if record is not None:
        _check_settings(record, settings)
    keras.utils.set_random_seed(seed)  # the new layers' initialisation, reproducibly
    with cluster.scope():
        if isinstance(model, str):
            # Layers take the dtype policy in force when built; the caller's policy is restored.
            policy = keras.config.dtype_policy()
            if mixed_precision:
                keras.config.set_dtype_policy("mixed_bfloat16")
                _warn_onednn_bfloat16()
            try:
                model = get_model(model, weights=weights, classes=num_classes,
                                  **({"dropout": dropout} if dropout else {}), **(model_kwargs or {}))
            finally:
                keras.config.set_dtype_policy(policy)
        freeze(model, freeze_until, freeze_bn)
        schedule_fn = learning_rate_schedule(learning_rate, steps_per_epoch, total_epochs, warmup_epochs,
                                             schedule)
        opt = _optimizer(optimizer, schedule_fn, momentum, weight_decay, model, head_lr_multiplier)
        loss = SparseCrossentropy(label_smoothing) if label_smoothing else "sparse_categorical_crossentropy"
        model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])

    start_epoch, start_batch = 0, 0
    if record is not None:
        opt.build(model.trainable_variables)
        model.load_weights(record["weights"])
        start_epoch, start_batch = record["epoch"], record["batches_done"]
        print(f"Resuming {run_dir} at epoch {start_epoch + 1}, batch {start_batch} from {record['path']} "
              f"(optimizer step {int(opt.iterations.numpy() if hasattr(opt.iterations, 'numpy') else opt.iterations)}).")
    checkpointer = _Checkpointer(run_dir, checkpoint_every, cluster, steps_per_epoch, settings,
                                 resumed_from=record["path"].stem if record else None)

    history_path = run_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() and record else []
    history = [h for h in history if h["epoch"] < start_epoch]
    skipped = SkippedVideos()
    callbacks = list(callbacks or [])
    if cluster.is_chief:  # one writer of the run directory
        _drop_epochs_from(run_dir / "metrics.csv", start_epoch)
        callbacks.append(keras.callbacks.CSVLogger(str(run_dir / "metrics.csv"), append=True))
        if keras.backend.backend() == "tensorflow":
            callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard")))
    for epoch in range(start_epoch, total_epochs):
        clip_frames = frames if epoch < epochs else long_frames
        first = start_batch if epoch == start_epoch else 0
        metrics = record["metrics"] if record and epoch == start_epoch else None  # the epoch's sums so far
        train = clip_dataset(train_videos, training=True, frames=clip_frames, stride=stride,
                             batch_size=batch_size, seed=seed, epoch=epoch, start_batch=first,
                             balanced=balanced_sampling,
                             skipped=skipped, shard=shard, resize=resize, crop=crop, flip=flip)
        val = None
        if validate and val_videos:
            val = clip_dataset(val_videos, training=False, frames=clip_frames, stride=stride,
                               batch_size=batch_size, clips_per_video=1, skipped=skipped, shard=shard,
                               resize=resize, crop=crop)
        with warnings.catch_warnings():
            # The validation set's length is unknown (unreadable videos are dropped), so Keras
            # warns when it ends: harmless. A short training epoch raises instead (its length
            # is asserted in clip_dataset), so this hides no lost training step.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            result = model.fit(train, validation_data=val, epochs=epoch + 1, initial_epoch=epoch,
                               callbacks=callbacks + [checkpointer.callback(epoch, first, metrics)],
                               class_weight=fit_class_weight,
                               verbose=1 if progress else 0, shuffle=False)
        logs = {k: float(v[-1]) for k, v in result.history.items()}
        history.append({"epoch": epoch, "frames": clip_frames, **logs})
        if cluster.is_chief:
            write_json(history_path, history)  # before the checkpoint that says the epoch is done
            plot_history(history, run_dir / "curves.png")
        checkpointer.save(model, epoch + 1, 0)
    if len(skipped):
        print(skipped.summary())

    if not cluster.is_chief:
        _save_weights(model, run_dir / "preset.weights.h5", cluster)  # the chief's save_preset
        return {"history": history, "preset": None, "run_dir": run_dir, "skipped": dict(skipped.reasons),
                "model": model}
    metrics = None
    if eval_clips and val_videos and cluster.num_processes == 1:
        from keras_r21d.evaluation import evaluate_model, format_table, write_outputs

        metrics = evaluate_model(model, val_videos, frames=long_frames or frames, clips_per_video=eval_clips,
                                 batch_size=batch_size, stride=stride, class_names=labels, progress=progress,
                                 resize=resize, crop=crop)
        if not quiet:
            print(format_table({split: metrics}, protocol_text=metrics["protocol_text"]))
        write_outputs({"splits": {split: metrics}, "class_names": labels, "dataset": dataset,
                       "model": model_name, "protocol_text": metrics["protocol_text"]}, run_dir)
    if not isinstance(model, VideoResNet):  # a model of the user's own: Keras's format keeps it whole
        model.save(run_dir / "model.keras")
        print(f"Saved {run_dir / 'model.keras'} ({model.name} is not a keras_r21d network, so no preset)")
        return {"history": history, "preset": None, "run_dir": run_dir, "skipped": dict(skipped.reasons),
                "model": model, "metrics": metrics}
    preset = save_preset(model, run_dir / "preset", {
        "labels": list(labels) if labels else None, "frames": long_frames or frames,
        "trained_from": weights if isinstance(weights, str) else None, "dataset": dataset,
        "split": split, "model": model_name,
    })
    if push_to_hub:
        from keras_r21d.presets import push_to_hub as push

        commit = push(preset, push_to_hub)
        print(f"Pushed {preset} to hf://{push_to_hub}@{commit}")
    return {"history": history, "preset": preset, "run_dir": run_dir, "skipped": dict(skipped.reasons),
            "model": model, "metrics": metrics}


def plot_history(history, path):
    """Training curves (loss and accuracy per epoch, training and validation) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = [h.get(prefix + metric) for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style,
                        label=f"{'validation' if prefix else 'training'} {metric}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
