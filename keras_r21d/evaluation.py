"""Clip- and video-level accuracy of a classifier on a video dataset (REFERENCE section 6).

The protocol of the paper: every test video gives `clips_per_video` uniformly spaced
clips of `frames` frames (10 clips of 16 frames by default), each center-cropped to
112x112 after resizing the frames to 128x171.

- clip@1: every clip classified alone (top-1);
- video@k: the softmax of all clips of a video averaged, then top-k.

UCF101 and HMDB51 are reported per official split and as the mean over the splits
evaluated. Every number is printed and stored with the protocol that produced it.

Python API: `video_metrics` (pure NumPy), `evaluate_model` (a model on a list of
videos), `evaluate` (dataset + split + network, behind `keras-r21d evaluate`) and
`plot_confusion`. `add_evaluate_arguments` / `run_evaluate` are the command-line hook.
"""

import importlib
import logging
import math
import os
import pathlib

import numpy as np

from keras_r21d.data.preprocessing import CROP, KINETICS_MEAN, KINETICS_STD, RESIZE
from keras_r21d.data.splits import KINETICS
from keras_r21d.fileio import write_json
from keras_r21d.inference import to_probabilities
from keras_r21d.models import metadata_of

SPLITS = (1, 2, 3)
TABLE_METRICS = ("clip@1", "video@1", "video@5")
MAX_LABELLED_CLASSES = 60


# ---------------------------------------------------------------- metrics (NumPy)

def _top_k(probs, k):
    """Indices of the k largest entries of every row, ties broken towards the lower index."""
    # A stable sort of -p keeps equal values in index order.
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def _top_k_correct(probs, labels, k):
    return (_top_k(probs, k) == labels[:, None]).any(axis=1)


def video_metrics(clip_probs, clip_labels, video_index, top=(1, 5)):
    """Clip- and video-level accuracy from the class probabilities of every clip.

    Args:
        clip_probs: `(clips, classes)` probabilities (softmax outputs) of every clip.
        clip_labels: `(clips,)` int true class of every clip.
        video_index: `(clips,)` int id of the video every clip comes from; clips of
            one video share an id (ids need not be contiguous or sorted).
        top: the k of the top-k accuracies, e.g. `(1, 5)`. A k at or above the
            number of classes gives 1.0.

    Returns:
        A dict with `clip@k` (every clip alone) and `video@k` (the clips'
        probabilities averaged per video, then top-k) for every k of `top`, as
        floats in [0, 1]; `videos` and `clips` (counts); `per_class`: float array
        `(classes,)`, the video@1 accuracy of the videos of every true class (NaN
        for a class with no video); `confusion`: int array `(classes, classes)`,
        videos counted by true class (rows) and top-1 prediction (columns).
        Ties between classes go to the lower class index.
    """
    probs = np.asarray(clip_probs, dtype="float64")
    labels = np.asarray(clip_labels)
    ids = np.asarray(video_index)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"`clip_probs` must be a non-empty (clips, classes) array; received shape {probs.shape}.")
    clips, classes = probs.shape
    for name, array in (("clip_labels", labels), ("video_index", ids)):
        if array.shape != (clips,):
            raise ValueError(f"`{name}` must have shape ({clips},), one entry per clip; received {array.shape}.")
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"`{name}` must hold integers; received dtype {array.dtype}.")
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(
            f"`clip_labels` must lie in [0, {classes}) for {classes} classes; received values from "
            f"{labels.min()} to {labels.max()}."
        )
    top = tuple(int(k) for k in np.atleast_1d(top))
    if not top or min(top) < 1:
        raise ValueError(f"`top` must hold positive ints; received {top}.")

    # Average the clips of every video (np.unique sorts the ids).
    videos, inverse = np.unique(ids, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(videos))
    video_probs = np.zeros((len(videos), classes))
    np.add.at(video_probs, inverse, probs)
    video_probs /= counts[:, None]
    video_labels = np.full(len(videos), -1)
    video_labels[inverse] = labels
    if (video_labels[inverse] != labels).any():
        bad = videos[np.unique(inverse[video_labels[inverse] != labels])][:5]
        raise ValueError(f"The clips of a video must share one label; videos {bad.tolist()} have several.")

    result = {}
    for k in top:
        result[f"clip@{k}"] = float(_top_k_correct(probs, labels, k).mean())
    for k in top:
        result[f"video@{k}"] = float(_top_k_correct(video_probs, video_labels, k).mean())
    predictions = _top_k(video_probs, 1)[:, 0]
    confusion = np.zeros((classes, classes), dtype="int64")
    np.add.at(confusion, (video_labels, predictions), 1)
    per_video = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(per_video > 0, np.diag(confusion) / per_video, np.nan)
    result.update(videos=len(videos), clips=int(clips), per_class=per_class, confusion=confusion)
    return result


# ---------------------------------------------------------------- a model on a list of videos

def uniform_protocol(frames=16, clips_per_video=10, stride=1, resize=RESIZE, crop=CROP):
    """The protocol dict and its one-line description, as printed and stored with numbers."""
    of = f"{resize[0]}x{resize[1]}" if resize else "the original frames"
    crop_text = f"center {crop}x{crop} of {of}"
    info = {"frames": frames, "clips_per_video": clips_per_video, "crops": 1, "crop": crop_text,
            "stride": stride}
    stride_text = f", temporal stride {stride}" if stride != 1 else ""
    text = (f"video@k: softmax averaged over {clips_per_video} uniformly spaced {frames}-frame clips per "
            f"video{stride_text}, 1 center crop ({crop_text[7:]}); clip@1: every clip alone")
    return info, text


def _predict(model, batch):
    if hasattr(model, "predict_on_batch"):
        return model.predict_on_batch(batch)
    return model.predict(batch, verbose=0)


def evaluate_model(model, videos, frames=16, clips_per_video=10, batch_size=8, stride=1,
                   class_names=None, progress=True, resize=RESIZE, crop=CROP, mean=KINETICS_MEAN,
                   std=KINETICS_STD, protocol=None):
    """Clip- and video-level accuracy of a classifier on a list of videos.

    The clips come from `keras_r21d.data.clip_dataset(..., training=False)`:
    `clips_per_video` uniformly spaced clips per video, frames resized to 128x171,
    center crop 112x112, Kinetics normalisation.

    Args:
        model: a Keras classifier taking `(batch, frames, 112, 112, 3)` clips and
            returning `(batch, classes)` probabilities or logits (rows that are not
            probabilities get a softmax).
        videos: list of `(video_path, label)`, e.g. from `load_split`.
        frames: clip length T.
        clips_per_video: clips per video (the paper: 10; torchvision: 5).
        batch_size: clips per forward pass.
        stride: temporal stride between a clip's frames.
        class_names: optional names of the model's classes, stored in the result.
        progress: show a tqdm progress bar.
        resize, crop: frame size before the center crop, and the crop's side.
        mean, std: per-channel normalisation of 0..1 RGB.
        protocol: a named protocol ("torchvision", "paper", "mmaction2") or a
            `keras_r21d.data.protocols.Protocol`: its clips, crops, frame rate,
            resize and crop replace `clips_per_video`, `resize`, `crop` (and
            `frames` when it fixes one); every view (clip x crop) counts as a clip
            for clip@1, and video@k averages all views.

    Returns:
        The dict of `video_metrics` plus `protocol` (frames, clips_per_video,
        crops, crop, stride), `protocol_text` (one line), `skipped` (`{path: reason}`
        of the videos that could not be decoded: they are left out of the metrics,
        and logged) and `class_names` when given.
    """
    from tqdm import tqdm

    from keras_r21d.data.pipeline import SkippedVideos, clip_dataset
    from keras_r21d.inference import clip_length
    from keras_r21d.models.optimize import inference_model

    videos = list(videos)
    if not videos:
        raise ValueError("`videos` is empty: pass a list of (video_path, label).")
    if protocol is not None:
        return _evaluate_protocol(model, videos, protocol, frames, batch_size, class_names, progress, mean, std)
    clip_length(model, frames)  # R2D's networks take exactly their own clip length
    dataset = clip_dataset(videos, training=False, frames=frames, stride=stride, batch_size=batch_size,
                           clips_per_video=clips_per_video, with_video_index=True, resize=resize,
                           crop=crop, mean=mean, std=std, skipped=(skipped := SkippedVideos()))
    model = inference_model(model)
    probs, labels, ids = [], [], []
    with tqdm(total=len(videos) * clips_per_video, unit="clip", disable=not progress,
              desc="evaluate", leave=False) as bar:
        for clips, clip_labels, clip_ids in dataset.as_numpy_iterator():
            probs.append(to_probabilities(_predict(model, clips), model).astype("float32"))
            labels.append(clip_labels)
            ids.append(clip_ids)
            bar.update(len(clips))
    return _metrics(probs, np.concatenate(labels) if labels else labels, np.concatenate(ids) if ids else ids,
                    len(videos), skipped, class_names,
                    *uniform_protocol(frames, clips_per_video, stride, resize, crop))


def _metrics(probs, labels, ids, num_videos, skipped, class_names, protocol, protocol_text):
    """`video_metrics` of the clip probabilities, with the protocol, skipped videos and class names."""
    from keras_r21d.data.video import VideoReadError

    if not probs:
        raise VideoReadError(f"None of the {num_videos} videos could be decoded. {skipped.summary()}")
    probs = np.concatenate(probs)
    if class_names is not None and len(class_names) != probs.shape[1]:
        raise ValueError(
            f"The model predicts {probs.shape[1]} classes but {len(class_names)} class names were given."
        )
    result = video_metrics(probs, np.asarray(labels), np.asarray(ids))
    result["protocol"], result["protocol_text"] = protocol, protocol_text
    result["skipped"] = dict(sorted(skipped.reasons.items()))
    if class_names is not None:
        result["class_names"] = list(class_names)
    return result


def _evaluate_protocol(model, videos, protocol, frames, batch_size, class_names, progress, mean, std):
    """`evaluate_model` under a `Protocol`: the views of each video (decoded on a thread
    ahead of the network), their probabilities averaged per video."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from keras_r21d.data.pipeline import SkippedVideos
    from keras_r21d.data.protocols import get_protocol, protocol_views
    from keras_r21d.data.video import VideoReadError
    from keras_r21d.inference import clip_length
    from keras_r21d.models.optimize import inference_model

    protocol = get_protocol(protocol)
    frames = clip_length(model, protocol.frames or frames)
    model = inference_model(model)
    skipped = SkippedVideos()

    def views(path):
        try:
            return protocol_views(path, protocol, frames, mean, std)
        except (VideoReadError, ValueError) as error:
            skipped.add(str(path), f"{type(error).__name__}: {error}")
            return None

    probs, labels, ids = [], [], []
    with ThreadPoolExecutor(max_workers=1) as pool, tqdm(total=len(videos), unit="video", disable=not progress,
                                                         desc="evaluate", leave=False) as bar:
        ahead = pool.submit(views, videos[0][0])
        for index, (_, label) in enumerate(videos):
            x = ahead.result()
            if index + 1 < len(videos):  # the next video decodes while the network runs on this one
                ahead = pool.submit(views, videos[index + 1][0])
            bar.update(1)
            if x is None:
                continue
            for start in range(0, len(x), batch_size):
                probs.append(to_probabilities(_predict(model, x[start:start + batch_size]), model).astype("float32"))
            labels += [label] * len(x)
            ids += [index] * len(x)
    text = (f"{protocol} ({frames} frames); video@k: softmax averaged over the {protocol.clips * protocol.crops} "
            "views of a video; clip@1: every view alone")
    return _metrics(probs, labels, ids, len(videos), skipped, class_names, {**protocol.record(), "frames": frames},
                    text)


# ---------------------------------------------------------------- plots

def plot_confusion(confusion, class_names, path, title="Confusion matrix (video@1, rows normalised)"):
    """Writes the confusion matrix as a PNG, each row normalised to sum to 1.

    Args:
        confusion: `(classes, classes)` counts, rows = true class, columns = predicted.
        class_names: names of the classes (shown on the axes when there are at most
            60 classes), or None.
        path: the PNG file to write.
        title: the figure title.

    Returns:
        `pathlib.Path` of the written file.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("Plotting the confusion matrix needs matplotlib: pip install matplotlib.") from error

    confusion = np.asarray(confusion, dtype="float64")
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.shape[0] == 0:
        raise ValueError(f"`confusion` must be a square (classes, classes) array; received shape {confusion.shape}.")
    classes = confusion.shape[0]
    if class_names is not None and len(class_names) != classes:
        raise ValueError(f"{len(class_names)} class names for a {classes}x{classes} confusion matrix.")
    totals = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)

    labelled = class_names is not None and classes <= MAX_LABELLED_CLASSES
    side = min(max(4.0, 0.22 * classes + 2.5), 16.0) if labelled else 7.0
    figure = Figure(figsize=(side + 1.2, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title, fontsize=10)
    if labelled:
        fontsize = 8 if classes <= 30 else 5
        axes.set_xticks(range(classes), [str(n) for n in class_names], rotation=90, fontsize=fontsize)
        axes.set_yticks(range(classes), [str(n) for n in class_names], fontsize=fontsize)
    else:
        axes.set_xticks([])
        axes.set_yticks([])
    figure.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


# ---------------------------------------------------------------- dataset + split + network

def _splits(split):
    if isinstance(split, str) and split.lower() == "all":
        return list(SPLITS)
    try:
        value = int(split)
    except (TypeError, ValueError):
        value = None
    if value not in SPLITS or isinstance(split, bool):
        raise ValueError(f"`split` must be 1, 2, 3 or 'all'; received {split!r}.")
    return [value]


def _build_model(model, weights, classes, frames, names, dataset):
    """The network to evaluate, checked to classify into the dataset's classes."""
    import keras

    from keras_r21d.applications import get_model

    if isinstance(model, keras.Model):
        built = model
    elif isinstance(model, str):
        if weights is None and classes is None:
            classes = len(names)
        built = get_model(model, weights=weights, classes=classes, frames=frames)
    else:
        raise TypeError(f"`model` must be a registered network name or a keras.Model; received {model!r}.")
    if names is not None:
        _check_classes(built, names, dataset)
    return built


def _check_classes(built, names, dataset):
    """The network classifies into the dataset's classes (a warning when its stored names differ)."""
    outputs = built.output_shape[-1]
    if outputs != len(names):
        raise ValueError(
            f"The model predicts {outputs} classes but {dataset} has {len(names)}. Pass weights fine-tuned "
            f"on {dataset} (a preset directory from `keras-r21d finetune`), or classes={len(names)} for a "
            "new, untrained classifier."
        )
    labels = metadata_of(built).get("labels")
    if labels is not None and len(labels) == len(names) and list(labels) != list(names):
        first = next(i for i, (a, b) in enumerate(zip(labels, names)) if a != b)
        logging.getLogger("keras_r21d").warning(
            "The class names stored with the weights differ from those of %s (class %d: %r vs %r); the "
            "metrics assume the classifier follows %s's class order.", dataset, first, labels[first],
            names[first], dataset)


def _json_ready(value):
    """NumPy arrays and scalars to lists and numbers; NaN to None (valid JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_ready(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def format_table(splits, mean=None, protocol_text=None):
    """The printed table: split, videos, clips, clip@1, video@1, video@5 (percent)."""
    lines = [f"{'split':<6}{'videos':>8}{'clips':>9}" + "".join(f"{m:>9}" for m in TABLE_METRICS)]
    rows = [(str(k), m) for k, m in splits.items()] + ([("mean", mean)] if mean is not None else [])
    for name, metrics in rows:
        lines.append(f"{name:<6}{metrics['videos']:>8}{metrics['clips']:>9}"
                     + "".join(f"{100 * metrics[m]:>9.2f}" for m in TABLE_METRICS))
    if protocol_text:
        lines.append(f"protocol: {protocol_text}")
    return "\n".join(lines)


def evaluate(dataset, root, split=1, model="r2plus1d_18", weights="kinetics400", frames=16,
             clips_per_video=10, batch_size=8, splits_dir=None, output_dir=None, classes=None,
             stride=1, progress=True, verbose=True, protocol=None, annotations=None):
    """Evaluates a network on the test videos of one or all official splits.

    Args:
        dataset: a dataset `keras_r21d.data.splits` knows: "ucf101", "hmdb51" (official
            splits) or "kinetics400" / "kinetics600" / "kinetics700" (an annotation CSV).
        root: the folder of the dataset's videos.
        split: 1, 2, 3 or "all" (the 3 official splits and their mean); for Kinetics
            the CSV's split, "validate" by default.
        model: a registered network name (see `keras-r21d models`) or a built
            `keras.Model` (then `weights` and `classes` are ignored).
        weights: preset name or alias, "hf://owner/repo[@rev]", a preset directory,
            a `.weights.h5` file, or None (random, for smoke tests). Its classifier
            must have as many classes as the dataset.
        frames, clips_per_video, batch_size, stride, protocol: see `evaluate_model`
            (a protocol names the clips, crops, frame rate and resize; the weights'
            own mean and std still apply).
        annotations: Kinetics' annotation CSV (see `keras_r21d.data.load_kinetics`:
            the videos' layouts, missing videos reported in `missing`).
        splits_dir: folder of the official split lists (default: the loader's).
        output_dir: if given, write `metrics.json` and `confusion_split{k}.png` there.
        classes: classifier size, to replace the weights' classifier by a new
            (untrained) one; None keeps the weights' (or the dataset's size without
            weights).
        progress: show progress bars.
        verbose: print the table and the protocol.

    Returns:
        A dict: `dataset`, `model`, `weights`, `splits` (`{k: evaluate_model result}`),
        `mean` (clip@1, video@1, video@5 averaged over the evaluated splits; videos
        and clips summed), `protocol`, `protocol_text`, `class_names`, and with
        `output_dir` `paths` (`metrics`, `confusion: {k: png}`).
    """
    try:
        split_lists = importlib.import_module("keras_r21d.data.splits")
    except ImportError as error:
        raise RuntimeError(f"The split loader keras_r21d.data.splits is unavailable: {error}") from error

    from keras_r21d.inference import stored_preprocessing
    from keras_r21d.models.optimize import inference_model

    missing = None
    if dataset in KINETICS:
        subset = split if split in ("train", "validate", "test") else "validate"
        if annotations is None:
            annotations = split_lists.find_kinetics_annotations(root, subset)
        if isinstance(model, str) and weights is None and classes is None:  # a new classifier: the CSV's classes
            classes = len(split_lists.load_kinetics(annotations, root, subset)[1])
        network = _build_model(model, weights, classes, frames, None, dataset)
        stored = metadata_of(network).get("labels")  # the weights' class order, when they carry it
        videos, names, missing = split_lists.load_kinetics(annotations, root, subset, class_names=stored)
        _check_classes(network, names, dataset)
        tests = {subset: videos}
    else:
        tests = {k: None for k in _splits(split)}
        # The class names of the split files actually used (a user's own may hold fewer classes).
        splits_dir = split_lists.find_splits_dir(dataset, root, splits_dir)
        names = list(split_lists.class_names(dataset, splits_dir=splits_dir))
        network = _build_model(model, weights, classes, frames, names, dataset)
    fast = inference_model(network)  # once for all splits (evaluate_model would redo it per split)
    preprocessing = stored_preprocessing(network)  # the weights' own, else Kinetics'
    per_split = {}
    for k, videos in tests.items():
        if videos is None:
            videos = split_lists.load_split(dataset, root, split=k, subset="test", splits_dir=splits_dir)
        per_split[k] = evaluate_model(fast, videos, frames=frames, clips_per_video=clips_per_video,
                                      batch_size=batch_size, stride=stride, class_names=names,
                                      progress=progress, protocol=protocol, **preprocessing)
    mean = {m: float(np.mean([r[m] for r in per_split.values()])) for m in TABLE_METRICS}
    mean.update(videos=sum(r["videos"] for r in per_split.values()),
                clips=sum(r["clips"] for r in per_split.values()))
    first = next(iter(per_split.values()))
    info, text = first["protocol"], first["protocol_text"]
    result = {
        "dataset": dataset, "model": network.name,
        "weights": os.fspath(weights) if isinstance(model, str) and weights is not None else None,
        "splits": per_split, "mean": mean, "protocol": info, "protocol_text": text, "class_names": names,
    }
    if missing is not None:
        result["missing"] = missing
    if verbose:
        print(format_table(per_split, mean if len(per_split) > 1 else None, text), flush=True)
        skipped = {path: reason for r in per_split.values() for path, reason in r["skipped"].items()}
        if skipped:
            print(f"{len(skipped)} videos could not be decoded and are not counted:", flush=True)
            for path, reason in list(skipped.items())[:20]:
                print(f"  {path}: {reason}", flush=True)
    if output_dir is not None:
        result["paths"] = write_outputs(result, output_dir)
        if verbose:
            print(f"Wrote {result['paths']['metrics']} and {len(per_split)} confusion matrices.")
    return result


def write_outputs(result, output_dir):
    """Writes `metrics.json` and `confusion_split{k}.png` of an `evaluate` result."""
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pngs = {}
    for k, metrics in result["splits"].items():
        pngs[k] = plot_confusion(
            metrics["confusion"], result["class_names"], output_dir / f"confusion_split{k}.png",
            title=f"{result['model']} on {result['dataset']} split {k}: video@1 {100 * metrics['video@1']:.2f}%",
        )
    document = {key: value for key, value in result.items() if key != "paths"}
    # The class names are stored once, at the top.
    document["splits"] = {k: {key: value for key, value in metrics.items() if key != "class_names"}
                          for k, metrics in result["splits"].items()}
    path = output_dir / "metrics.json"
    write_json(path, _json_ready(document))
    return {"metrics": path, "confusion": pngs}
