"""Input preprocessing of the Kinetics checkpoints (REFERENCE section 4).

RGB frames are resized to 128x171 (H x W) with bilinear interpolation without
antialiasing, center-cropped to 112x112, scaled to [0, 1] and normalised with the
Kinetics mean and std. The resize is written with `keras.ops` (gather + lerp) so that
it gives the same numbers as PyTorch's
`F.interpolate(mode="bilinear", align_corners=False, antialias=False)` on every
backend: half-pixel centres, source coordinates clamped at the borders.

Only the rows and columns that survive the crop are interpolated, so resize + crop
costs one 112x112 interpolation per frame.
"""

import keras
import numpy as np
from keras import ops

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
RESIZE = (128, 171)
CROP = 112


def _pair(value, name):
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(
            f"`{name}` must be None, a positive int or 2 positive ints (H, W); "
            f"received {value!r}."
        )
    return value


def _triplet(value, name):
    value = tuple(float(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"`{name}` must hold 3 values (R, G, B); received {value!r}.")
    return value


def _check_shape(shape):
    if len(shape) not in (4, 5) or shape[-1] != 3:
        raise ValueError(
            "Expected RGB clips of shape (T, H, W, 3) or (batch, T, H, W, 3); "
            f"received shape {tuple(shape)}."
        )


def _crop_offset(size, crop):
    """`int(round((size - crop) / 2))` as torchvision's `center_crop`, also for tensors.

    Python's `round` sends halves to the even integer, so an odd margin of 59 pixels
    (171 -> 112) starts the crop at 30, not at 29 as `(171 - 112) // 2` would.
    """
    margin = size - crop
    half = margin // 2
    return half + (margin % 2) * (half % 2)


def _source_pixels(in_size, out_size, start, count):
    """Neighbours and weight of the output rows `start:start + count` (PyTorch's rule).

    align_corners=False: source coordinate `scale * (i + 0.5) - 0.5` with
    `scale = in / out` in float32, negative values clamped to 0, the upper neighbour
    clamped to the last pixel. PyTorch's CPU kernel evaluates it in float32 with one
    fused multiply-add; evaluating it in float64 and rounding once to float32 gives
    the same coordinates bit for bit, where plain float32 is off by an ulp (up to
    ~1e-2 grey level on 340-pixel frames).
    """
    index = np.arange(start, start + count, dtype="float64") + 0.5
    if isinstance(in_size, int):
        scale = np.float64(np.float32(in_size) / np.float32(out_size))
        source = np.maximum((scale * index - 0.5).astype("float32"), np.float32(0))
        low = np.minimum(np.floor(source).astype("int32"), in_size - 1)
    else:  # size known only when a TF graph runs (tf.data with varying frame sizes)
        scale = ops.cast(ops.cast(in_size, "float32") / np.float32(out_size), "float64")
        source = ops.maximum(ops.cast(scale * index - 0.5, "float32"), 0.0)
        low = ops.minimum(ops.cast(ops.floor(source), "int32"), in_size - 1)
    if isinstance(in_size, int):
        return low, np.minimum(low + 1, in_size - 1), source - low.astype("float32")
    high = ops.minimum(low + 1, in_size - 1)
    return low, high, ops.subtract(source, ops.cast(low, "float32"))


def _interpolate_axis(x, axis, in_size, out_size, start, count):
    """Rows `start:start + count` of a bilinear resize of `x` along `axis` to `out_size`."""
    low, high, weight = _source_pixels(in_size, out_size, start, count)
    # Broadcast the weights along the axes after `axis` (H is followed by W and C).
    weight = ops.reshape(weight, (count,) + (1,) * (-axis - 1))
    before = ops.take(x, low, axis=axis)
    after = ops.take(x, high, axis=axis)
    return before + (after - before) * weight


def resize_crop_numpy(frames, resize, top, left, crop):
    """The `crop` window at (`top`, `left`) of frames resized to `resize`, in NumPy.

    The same arithmetic as `preprocess_input`'s resize (bit for bit), for data
    pipelines that crop anywhere (random crops) and run outside any Keras backend.

    Args:
        frames: uint8 or float array `(T, H, W, C)`.
        resize: `(H, W)` to resize to.
        top, left: corner of the window in the resized frames.
        crop: `(h, w)` of the window.

    Returns:
        float32 array `(T, h, w, C)`.
    """
    x = np.asarray(frames, dtype="float32")
    for axis, (size, start, count) in enumerate(zip(resize, (top, left), crop), start=1):
        low, high, weight = _source_pixels(x.shape[axis], size, start, count)
        weight = weight.reshape((count,) + (1,) * (x.ndim - axis - 1))
        before, after = np.take(x, low, axis=axis), np.take(x, high, axis=axis)
        x = before + (after - before) * weight
    return x


def stored_preprocessing_of(metadata):
    """`resize`, `crop`, `mean`, `std` recorded under "preprocessing" in the metadata of a
    preset (metadata.json), Kinetics' for what is not recorded."""
    stored = (metadata or {}).get("preprocessing") or {}
    return {"resize": tuple(stored.get("resize", RESIZE)), "crop": stored.get("crop", CROP),
            "mean": tuple(stored.get("mean", KINETICS_MEAN)), "std": tuple(stored.get("std", KINETICS_STD))}


def preprocess_input(clips, resize=RESIZE, crop=CROP, mean=KINETICS_MEAN, std=KINETICS_STD):
    """Prepares RGB clips for the Kinetics checkpoints.

    Resizes every frame to `resize` (bilinear, no antialias, as PyTorch's
    `F.interpolate(mode="bilinear", align_corners=False, antialias=False)`),
    center-crops `crop` x `crop` with torchvision's offsets
    (`int(round((H - crop) / 2))`, halves to even), scales to [0, 1] and
    normalises `(x / 255 - mean) / std`. The resize is done in float32 and not
    rounded back to uint8 (torchvision's video preset rounds it when given uint8
    frames; the two differ by at most half a grey level). In a TF graph with
    unknown frame sizes, a crop larger than the frame cannot be caught.

    Args:
        clips: uint8 (or float 0..255) RGB frames, shape `(T, H, W, 3)` or
            `(batch, T, H, W, 3)`; NumPy array or backend tensor.
        resize: `(H, W)` (or one int for both) to resize every frame to, or None
            to keep the frames' size.
        crop: side (or `(H, W)`) of the center crop, or None for no crop. It must
            fit in the (resized) frame.
        mean: per-channel mean of the [0, 1] pixels.
        std: per-channel standard deviation of the [0, 1] pixels.

    Returns:
        float32 tensor of shape `(..., T, crop_height, crop_width, 3)`.

    Example:
    >>> import numpy as np
    >>> clip = np.zeros((16, 240, 320, 3), dtype="uint8")
    >>> x = keras.ops.convert_to_numpy(preprocess_input(clip))
    >>> x.shape, x.dtype
    ((16, 112, 112, 3), dtype('float32'))
    >>> round(float(x[0, 0, 0, 0]), 4)  # (0 - 0.43216) / 0.22803
    -1.8952
    """
    resize, crop = _pair(resize, "resize"), _pair(crop, "crop")
    mean, std = _triplet(mean, "mean"), _triplet(std, "std")
    x = ops.convert_to_tensor(clips)
    _check_shape(x.shape)
    x = ops.cast(x, "float32")
    height, width = ops.shape(x)[-3], ops.shape(x)[-2]
    target = resize or (height, width)
    if crop is not None:
        for size, side, axis in zip(target, crop, "HW"):
            if isinstance(size, int) and side > size:
                raise ValueError(
                    f"Crop {crop} does not fit in frames of size {tuple(target)} along "
                    f"{axis}; received clips of shape {tuple(x.shape)} with resize={resize}."
                )
    window = crop or target
    top, left = (_crop_offset(size, side) for size, side in zip(target, window))
    if resize is None:
        x = x[..., top:top + window[0], left:left + window[1], :]
    else:
        x = _interpolate_axis(x, -3, height, resize[0], top, window[0])
        x = _interpolate_axis(x, -2, width, resize[1], left, window[1])
    mean = ops.convert_to_tensor([255.0 * m for m in mean], "float32")
    std = ops.convert_to_tensor([255.0 * s for s in std], "float32")
    return (x - mean) / std


@keras.saving.register_keras_serializable(package="keras_r21d")
class VideoPreprocessing(keras.layers.Layer):
    """Layer form of `preprocess_input`: resize, center crop, scale and normalise.

    Takes uint8 (or float 0..255) RGB clips `(batch, T, H, W, 3)` and returns
    normalised float clips `(batch, T, crop, crop, 3)` in the layer's compute dtype.
    Use it as the first layer of a model that eats raw frames, or map it over a
    `tf.data` pipeline (on the TensorFlow backend). It has no weights.

    Args:
        resize: `(H, W)` to resize every frame to, or None to keep the size.
        crop: side (or `(H, W)`) of the center crop, or None for no crop.
        mean: per-channel mean of the [0, 1] pixels.
        std: per-channel standard deviation of the [0, 1] pixels.
        **kwargs: standard layer arguments (`name`, `dtype`...).

    Example:
    >>> inputs = keras.Input((8, 240, 320, 3), dtype="uint8")
    >>> outputs = VideoPreprocessing()(inputs)
    >>> outputs.shape
    (None, 8, 112, 112, 3)
    >>> import numpy as np
    >>> clips = np.full((2, 8, 90, 120, 3), 255, dtype="uint8")
    >>> y = keras.ops.convert_to_numpy(VideoPreprocessing()(clips))
    >>> y.shape, round(float(y.max()), 4)  # (1 - 0.37645) / 0.216989
    ((2, 8, 112, 112, 3), 2.8736)
    """

    def __init__(self, resize=RESIZE, crop=CROP, mean=KINETICS_MEAN, std=KINETICS_STD,
                 **kwargs):
        super().__init__(**kwargs)
        self.resize = _pair(resize, "resize")
        self.crop = _pair(crop, "crop")
        self.mean = _triplet(mean, "mean")
        self.std = _triplet(std, "std")

    def call(self, inputs):
        outputs = preprocess_input(inputs, self.resize, self.crop, self.mean, self.std)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        _check_shape(input_shape)
        height, width = self.resize or input_shape[-3:-1]
        height, width = self.crop or (height, width)
        return (*input_shape[:-3], height, width, 3)

    def get_config(self):
        config = super().get_config()
        config.update({
            "resize": None if self.resize is None else list(self.resize),
            "crop": None if self.crop is None else list(self.crop),
            "mean": list(self.mean),
            "std": list(self.std),
        })
        return config
