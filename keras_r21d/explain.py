"""Where and when a network looked: Grad-CAM (Selvaraju et al., ICCV 2017) over video clips.

For a class c and a stage's feature map A (channels k over t x h x w), Grad-CAM weighs each
channel by the mean gradient of the class score y_c (before the softmax) over its positions,
sums, and keeps the positive part: `relu(sum_k mean(dy_c / dA_k) * A_k)`. The map has the
stage's resolution (conv5 of an 18-layer network: T/8 x 7 x 7 for R3D, 1 x 7 x 7 for R2D,
whose time collapses in its first layer) and is stretched back to the clip, trilinearly, so
it can be laid over the frames. The stages of the paper's networks keep different temporal
resolutions, and the maps show it.
"""

import numpy as np

from keras_r21d.data.preprocessing import _source_pixels
from keras_r21d.models.backbone import VideoResNet, stage_layers, stage_names

LAYERS = tuple(stage_names())


def _stage_output(model, layer):
    """The output tensor of stage `layer` of `model` (its last block)."""
    if layer not in LAYERS:
        raise ValueError(f"Unknown layer {layer!r}; expected one of {list(LAYERS)}.")
    return stage_layers(model)[layer][-1].output


def _upsample(cam, size):
    """`cam` (t, h, w) resized to `size` (T, H, W), linearly along each axis (PyTorch's
    align_corners=False rule, as the clip's own resize)."""
    for axis, out in enumerate(size):
        low, high, weight = _source_pixels(cam.shape[axis], out, 0, out)
        weight = weight.reshape((out,) + (1,) * (cam.ndim - axis - 1))
        before, after = np.take(cam, low, axis=axis), np.take(cam, high, axis=axis)
        cam = before + (after - before) * weight
    return cam


def _gradient(function, x):
    """The gradient of the scalar `function(x)` at `x` (a NumPy array), on the running
    Keras backend: Keras has no backend-neutral gradient, so each backend's own."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = function(x)
        return tape.gradient(y, x).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.jit(jax.grad(function))(jax.numpy.asarray(x)))  # one compiled graph, not op by op
    if backend == "torch":
        x = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
        function(x).backward()
        return x.grad.detach().cpu().numpy()
    raise RuntimeError(f"grad_cam needs gradients, which the {backend!r} backend does not give; use TensorFlow, "
                       "JAX or PyTorch.")


def grad_cam(model, clip, layer="conv5", class_index=None):
    """Grad-CAM of a keras_r21d classifier on one preprocessed clip (any backend with gradients).

    Args:
        model: a `VideoResNet` with its classifier (a factory, `get_model`, a preset).
        clip: one preprocessed clip, `(T, H, W, 3)` (or a batch of one).
        layer: the stage whose feature map is explained, "conv1" ... "conv5".
        class_index: the class to explain; None: the top class.

    Returns:
        dict: `heatmap` (T, H, W) float32 in [0, 1] (the map stretched to the clip and
        divided by its maximum; zeros when the map is all zero), `map` (the stage's
        t x h x w map before stretching, not normalised), `class_index`, `probability`
        (the softmax of the class).
    """
    import keras
    from keras import ops

    if not isinstance(model, VideoResNet) or not model.get_config()["include_top"]:
        raise TypeError("grad_cam explains a keras_r21d classifier: a VideoResNet with include_top=True.")
    clip = np.asarray(clip, np.float32)
    if clip.ndim == 4:
        clip = clip[None]
    if clip.ndim != 5 or clip.shape[0] != 1:
        raise ValueError(f"`clip` must be one clip (T, H, W, 3) or a batch of one; received shape {clip.shape}.")
    fc = model.get_layer("fc")
    stage_output = _stage_output(model, layer)
    # The network cut at the stage: clip -> map, and map -> pooled features (whose scores,
    # before the softmax, are differentiated with respect to the map).
    stage = keras.ops.convert_to_numpy(keras.Model(model.input, stage_output)(clip, training=False))
    rest = keras.Model(stage_output, fc.input)

    def logits(a):
        return ops.matmul(rest(a, training=False), fc.kernel) + fc.bias

    scores = keras.ops.convert_to_numpy(logits(stage))[0].astype(np.float64)
    if class_index is None:
        class_index = int(np.argmax(scores))
    if not 0 <= class_index < len(scores):
        raise ValueError(f"`class_index` {class_index} is out of range: the model has {len(scores)} classes.")
    gradients = _gradient(lambda a: logits(a)[0, class_index], stage)[0]  # (t, h, w, k)
    cam = np.maximum((stage[0] * gradients.mean(axis=(0, 1, 2))).sum(axis=-1), 0)
    heatmap = _upsample(cam.astype(np.float32), clip.shape[1:4])
    peak = heatmap.max()
    probabilities = np.exp(scores - scores.max())
    return {"heatmap": (heatmap / peak if peak > 0 else heatmap).astype(np.float32), "map": cam,
            "class_index": class_index, "probability": float(probabilities[class_index] / probabilities.sum())}


def overlay(frames, heatmap, alpha=0.45):
    """RGB frames (T, H, W, 3) uint8 with `heatmap` (T, H, W, in [0, 1]) laid over them
    in matplotlib's "jet" colours: uint8 (T, H, W, 3)."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255
    return np.clip((1 - alpha) * frames + alpha * colours, 0, 255).astype(np.uint8)


def explain_video(model, path, layer="conv5", class_index=None, clips=1, frames=None):
    """Grad-CAM of `clips` uniformly spaced clips of a video file.

    Returns a list, one dict per clip: `grad_cam`'s result plus `frames` (the clip's
    RGB frames as the network saw them: resized and cropped, uint8) and `label`.
    `class_index` may be a class name of the weights' labels.
    """
    from keras_r21d.data.preprocessing import preprocess_input
    from keras_r21d.data.video import uniform_clips
    from keras_r21d.inference import clip_length, stored_preprocessing
    from keras_r21d.models import metadata_of

    labels = metadata_of(model).get("labels")
    if isinstance(class_index, str):
        if not class_index.isdigit() and (labels is None or class_index not in labels):
            raise ValueError(f"Unknown class {class_index!r}: " + (
                "the weights carry no class names; give an index." if labels is None else
                f"not among the {len(labels)} classes of the weights (e.g. {labels[:3]})."))
        class_index = int(class_index) if class_index.isdigit() else labels.index(class_index)
    preprocessing = stored_preprocessing(model)
    raw = uniform_clips(path, clip_length(model, frames), clips)
    # Resized and cropped once, in [0, 1]: shown as they are, normalised for the network.
    shown = np.asarray(preprocess_input(raw, preprocessing["resize"], preprocessing["crop"], (0, 0, 0), (1, 1, 1)))
    inputs = ((shown - np.asarray(preprocessing["mean"])) / np.asarray(preprocessing["std"])).astype(np.float32)
    results = []
    for x, rgb in zip(inputs, shown):
        result = grad_cam(model, x, layer, class_index)
        result["frames"] = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
        index = result["class_index"]
        result["label"] = labels[index] if labels and index < len(labels) else f"class {index}"
        results.append(result)
    return results


def plot_explanation(result, path, title=None, columns=8):
    """A PNG grid: frames above, their Grad-CAM overlays below (at most `columns` frames,
    evenly spaced), class and probability in the title."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from keras_r21d.fileio import write_bytes

    frames, heatmap = result["frames"], result["heatmap"]
    picks = np.unique(np.linspace(0, len(frames) - 1, min(columns, len(frames))).round().astype(int))
    figure = Figure(figsize=(1.6 * len(picks), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    overlays = overlay(frames, heatmap)
    for column, t in enumerate(picks):
        for row, image in enumerate((frames[t], overlays[t])):
            ax = figure.add_subplot(2, len(picks), row * len(picks) + column + 1)
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"frame {t}", fontsize=8)
    figure.suptitle(title or f"{result['label']} ({100 * result['probability']:.1f}%)", fontsize=10)
    png = io.BytesIO()
    figure.savefig(png, format="png")
    write_bytes(path, png.getvalue())
    return path


def save_explanation_gif(result, path, fps=8):
    """The overlays as an animated GIF, one frame per clip frame, looping."""
    import io

    from PIL import Image

    from keras_r21d.fileio import write_bytes

    images = [Image.fromarray(frame) for frame in overlay(result["frames"], result["heatmap"])]
    gif = io.BytesIO()
    images[0].save(gif, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    write_bytes(path, gif.getvalue())
    return path
