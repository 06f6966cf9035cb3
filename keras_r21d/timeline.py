"""Timelines of long videos: every window of a video scored by a classifier.

Where `predict_video` averages a few uniformly spaced clips into one answer per video,
`predict_timeline` classifies every window (`keras_r21d.data.sampling.windows`: frames
or seconds, at the video's own rate or resampled to `fps`) and keeps the class
probabilities of each, so what happens when in a long video can be read off. The
frames are decoded a batch of windows at a time (`read_frames` on that batch's frame
numbers), never the whole video at once.

The result is written as JSON (`write_timeline_json`), CSV (`write_timeline_csv`: one
row per window, the top classes in columns) and a PNG of the probabilities of the
classes most present over the video against time (`plot_timeline`).
"""

import csv
import io
import os

import numpy as np

from keras_r21d.data.sampling import check_windows, resample, windows
from keras_r21d.fileio import write_bytes, write_json, write_text
from keras_r21d.inference import clip_length, stored_preprocessing, to_probabilities
from keras_r21d.models import metadata_of


def _positive_int(value, what):
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"`{what}` must be a positive integer; received {value!r}.")
    return int(value)


def _class_names(model, labels, classes):
    from keras_r21d.presets.labels import KINETICS400_CLASSES, kinetics400_labels

    labels = metadata_of(model).get("labels") if labels is None else labels
    if labels is None:
        labels = kinetics400_labels() if classes == KINETICS400_CLASSES else [f"class {i}" for i in range(classes)]
    labels = list(labels)
    if len(labels) != classes:
        raise ValueError(f"`labels` has {len(labels)} names but {model.name} scores {classes} classes; expected one "
                         "name per class.")
    return labels


def check_timeline_arguments(window=None, stride=None, fps=None, unit="frames", top=5, batch_size=8):
    """ValueError for arguments `predict_timeline` cannot take, before any video is read;
    returns `(window, stride)`, whole numbers of frames as ints with unit="frames"."""
    _positive_int(top, "top")
    _positive_int(batch_size, "batch_size")
    return check_windows(window, stride, fps, unit)


def predict_timeline(model, path, window=None, stride=None, fps=None, unit="frames", top=5, labels=None,
                     batch_size=8, short="loop", tail="shift"):
    """The class probabilities of every window of a video file.

    Args:
        model: a classifier from keras_r21d (pretrained presets carry their labels,
            clip length and preprocessing); any Keras model from clips to class scores.
        path: a video file PyAV can decode.
        window: window length in `unit`; default: the model's clip length in frames
            (see `inference.clip_length`; with unit="seconds", that many samples).
        stride: step between window starts in `unit`; default: `window` (side by side).
        fps: sample the video at this rate; default: its own frames.
        unit: "frames" (samples) or "seconds".
        top: how many classes to keep per window in `top`.
        labels: class names; default: those stored with the weights (Kinetics-400's for
            400 unnamed classes, "class i" otherwise).
        batch_size: windows decoded and classified at a time.
        short, tail: a video shorter than a window, and the frames after the last full
            window (see `keras_r21d.data.sampling.windows`; a short video's one window
            loops over its frames, with a warning).

    Returns:
        dict: `video` (the path), `times` (a `(start, end)` in seconds per window),
        `frames` (windows x window length: the frame numbers of each window),
        `probabilities` (windows x classes, float32), `labels` (class names), `top`
        (per window, `(class_index, class_name, probability)` most likely first) and
        `window`, `stride`, `unit`, `fps` (the windows asked for).
    """
    from keras_r21d.data.preprocessing import preprocess_input
    from keras_r21d.data.video import frame_times, read_frames
    from keras_r21d.presets.labels import decode_predictions

    window, stride = check_timeline_arguments(window, stride, fps, unit, top, batch_size)
    path = os.fspath(path)
    times = frame_times(path)
    if unit == "frames":
        window = clip_length(model, window)  # refuses a window a fixed-length network cannot take
    elif window is None:
        # The model's clip length in samples, as seconds at the rate `windows` converts with.
        samples, _, durations = resample(times, fps)
        window = clip_length(model) * float(durations.sum()) / len(samples)
    stride = window if stride is None else stride
    wins = windows(times, window, stride, fps, unit, short=short, tail=tail, source=repr(path))
    size, fixed = len(wins[0].frames), model.input_shape[1]
    if fixed is not None and size != fixed:
        raise ValueError(f"{model.name} takes clips of exactly {fixed} frames; a window of {window} {unit} is "
                         f"{size} samples.")
    preprocessing = stored_preprocessing(model)
    outputs = []
    for i in range(0, len(wins), batch_size):
        part = wins[i:i + batch_size]
        clips = read_frames(path, np.concatenate([w.frames for w in part]))
        clips = clips.reshape(len(part), size, *clips.shape[1:])
        outputs.append(np.asarray(model.predict_on_batch(preprocess_input(clips, **preprocessing))))
    probabilities = to_probabilities(np.concatenate(outputs), model).astype(np.float32)
    labels = _class_names(model, labels, probabilities.shape[1])
    return {
        "video": path,
        "times": [(w.start, w.end) for w in wins],
        "frames": np.stack([w.frames for w in wins]),
        "probabilities": probabilities,
        "labels": labels,
        "top": decode_predictions(probabilities, top=min(top, probabilities.shape[1]), labels=labels),
        "window": window, "stride": stride, "unit": unit, "fps": fps,
    }


def timeline_json(result, probabilities=False):
    """`result` of `predict_timeline` as JSON-ready data: the windows asked for, the class
    names, and per window its start and end (seconds), frame numbers and top classes
    (with `probabilities`, also every class's probability)."""
    rows = []
    for k, ((start, end), frames, top) in enumerate(zip(result["times"], result["frames"], result["top"])):
        row = {"start": float(start), "end": float(end), "frames": [int(f) for f in frames],
               "top": [{"index": int(i), "label": name, "probability": float(p)} for i, name, p in top]}
        if probabilities:
            row["probabilities"] = [float(p) for p in result["probabilities"][k]]
        rows.append(row)
    return {"video": os.fspath(result["video"]), "window": result["window"], "stride": result["stride"],
            "unit": result["unit"], "fps": result["fps"], "labels": list(result["labels"]), "windows": rows}


def write_timeline_json(result, path, probabilities=False):
    """Writes `timeline_json(result, probabilities)` to `path` (atomically); returns `path`."""
    write_json(path, timeline_json(result, probabilities))
    return path


def write_timeline_csv(result, path):
    """Writes one row per window to `path` (atomically): `start`, `end` (seconds), then
    `label_k`, `probability_k` for the top classes k = 1, 2, ...; returns `path`."""
    top = len(result["top"][0]) if result["top"] else 0
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["start", "end"] + [f"{name}_{k}" for k in range(1, top + 1) for name in ("label", "probability")])
    for (start, end), classes in zip(result["times"], result["top"]):
        writer.writerow([repr(float(start)), repr(float(end))]
                        + [value for _, name, p in classes for value in (name, repr(float(p)))])
    write_text(path, text.getvalue())
    return path


def timeline_classes(result, top=5):
    """The `top` classes by mean probability over the windows, most present first:
    `[(class_index, class_name, mean probability)]` (ties: lower index first)."""
    mean = np.asarray(result["probabilities"], np.float64).mean(axis=0)
    order = np.argsort(-mean, kind="stable")[:_positive_int(top, "top")]
    return [(int(i), result["labels"][i], float(mean[i])) for i in order]


def plot_timeline(result, path, top=5):
    """Draws the probabilities of the `top` classes by mean probability (`timeline_classes`)
    against time (seconds, at the window centres) as a PNG at `path` (1000 x 400
    pixels, written atomically); returns `path`."""
    from matplotlib.figure import Figure

    probabilities = np.asarray(result["probabilities"])
    centres = [(start + end) / 2 for start, end in result["times"]]
    fig = Figure(figsize=(10, 4), dpi=100)
    ax = fig.subplots()
    for index, name, _ in timeline_classes(result, top):
        ax.plot(centres, probabilities[:, index], "-o" if len(centres) <= 60 else "-", markersize=3, label=name)
    ax.set_xlim(0, max(end for _, end in result["times"]))
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s, window centres)")
    ax.set_ylabel("probability")
    ax.set_title(f"{os.path.basename(os.fspath(result['video']))}: top {min(top, probabilities.shape[1])} classes "
                 f"by mean probability")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_bytes(path, png.getvalue())
    return path
