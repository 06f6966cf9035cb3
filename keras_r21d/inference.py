"""Video-level classification: several clips per video, softmax averaged."""

import numpy as np

from keras_r21d.models import metadata_of

DEFAULT_FRAMES = 16
# Rows of outputs that are >= 0 and sum to 1 within this are taken as probabilities.
PROBABILITY_TOLERANCE = 1e-3


def _classifier_activation(model):
    """The classifier activation a keras_r21d network (or its inference graph) records in
    its config; "unknown" for other models and for None."""
    try:
        config = model.get_config()
    except Exception:  # noqa: BLE001 - models without a config: judged by their outputs
        return "unknown"
    if not isinstance(config, dict):
        return "unknown"
    return config.get("network", config).get("classifier_activation", "unknown")  # an InferenceGraph nests it


def to_probabilities(outputs, model=None):
    """Classifier `outputs` (batch, classes) of `model` as class probabilities (float64): as
    they are when the model ends in a softmax (the factories' default), their softmax when
    it returns logits. For a model that does not record its classifier activation (or
    none given), rows that are >= 0 and sum to 1 are taken as probabilities, anything
    else as logits."""
    x = np.asarray(outputs, dtype="float64")
    if x.ndim != 2:
        raise ValueError(f"Expected classifier outputs of shape (batch, classes); received shape {x.shape}. "
                         "Build the model with include_top=True.")
    activation = _classifier_activation(model)
    if activation == "softmax" or (activation == "unknown" and len(x) and (x >= 0).all() and np.allclose(
            x.sum(axis=1), 1.0, atol=PROBABILITY_TOLERANCE)):
        return x
    x = np.exp(x - x.max(axis=1, keepdims=True))
    return x / x.sum(axis=1, keepdims=True)


def clip_length(model, frames=None):
    """The clip length to feed `model`: asked, fixed by the network, trained with, or 16."""
    fixed = model.input_shape[1]
    trained = metadata_of(model).get("frames")
    if frames is not None and fixed is not None and frames != fixed:
        raise ValueError(f"{model.name} takes clips of exactly {fixed} frames; received frames={frames}.")
    return frames or fixed or trained or DEFAULT_FRAMES


def video_clips(model, path, clips=10, frames=None):
    """`clips` uniformly spaced clips of a video file (`keras_r21d.data.uniform_clips`),
    preprocessed as `model`'s weights expect (the preprocessing stored with a preset,
    else Kinetics'): `(clips, T, H, W, 3)`."""
    from keras_r21d.data.preprocessing import preprocess_input
    from keras_r21d.data.video import uniform_clips

    return preprocess_input(uniform_clips(path, clip_length(model, frames), clips), **stored_preprocessing(model))


def stored_preprocessing(model):
    """`resize`, `crop`, `mean`, `std` the weights of `model` were trained with (stored
    with a preset), Kinetics' for what is not stored."""
    from keras_r21d.data.preprocessing import stored_preprocessing_of

    return stored_preprocessing_of(metadata_of(model))


def predict_video(model, path, clips=10, frames=None, top=5, labels=None):
    """Top classes of a video file: the mean softmax of `clips` uniformly spaced clips.

    Args:
        model: a classifier from keras_r21d (pretrained presets carry their labels,
            clip length and preprocessing).
        path: a video file PyAV can decode.
        clips: clips per video (the paper's protocol uses 10, torchvision's 5).
        frames: clip length; default: the model's own (see `clip_length`).
        top: how many classes to return.
        labels: class names; default: those stored with the weights.

    Returns:
        A list of `(class_index, class_name, probability)`, most likely first.
    """
    from keras_r21d.presets.labels import decode_predictions

    metadata = metadata_of(model)
    frames = clip_length(model, frames)
    probs = to_probabilities(model.predict(video_clips(model, path, clips, frames), batch_size=clips, verbose=0),
                             model)
    labels = labels or metadata.get("labels")
    if labels is None and probs.shape[1] != 400:
        labels = [f"class {i}" for i in range(probs.shape[1])]
    return decode_predictions(probs.mean(axis=0, keepdims=True), top=top, labels=labels)[0]
