"""Inference graphs: batch norm folded into the convolutions, convolutions lowered.

`optimize_for_inference` rebuilds a trained network as a chain of `FusedConv`
layers. Each carries one convolution with its batch norm folded in (a bias) and,
where the network has one, the ReLU that follows (and the residual sum before
it). On request (`conv2d_only`, for TFLite) convolutions that are really 2D or 1D
run as 2D ones: a 1 x k x k convolution over the frames folded into the batch, a
t x 1 x 1 one over (time, pixels); exact, and a (2+1)D graph then has no Conv3D.
oneDNN runs the 3D form faster, so that is the default (measured; see the README).
"""

import json

import keras
import numpy as np
from keras import layers, ops

from keras_r21d.models.backbone import VideoResNet
from keras_r21d.models.layers import (
    PACKAGE,
    BasicBlock,
    Conv2Plus1D,
    Stem,
    ZeroPaddedConv3D,
    pad_symmetric,
    torch_padding,
)

PRECISIONS = ("float32", "bfloat16")
CHANNEL_MULTIPLE = 16  # AVX-512 holds 16 float32


def fold_batchnorm(conv, bn):
    """Kernel and bias of `conv` followed by inference-mode `bn`, as NumPy arrays."""
    kernel = ops.convert_to_numpy(conv.kernel)
    bias = ops.convert_to_numpy(conv.bias) if conv.use_bias else np.zeros(kernel.shape[-1], kernel.dtype)
    gamma = ops.convert_to_numpy(bn.gamma) if bn.scale else 1.0
    beta = ops.convert_to_numpy(bn.beta) if bn.center else 0.0
    scale = gamma / np.sqrt(ops.convert_to_numpy(bn.moving_variance) + bn.epsilon)
    return kernel * scale, (bias - ops.convert_to_numpy(bn.moving_mean)) * scale + beta


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusedConv(layers.Layer):
    """Convolution + bias (a folded batch norm), then optionally + residual, ReLU.

    Computes `relu(conv(x) + bias [+ residual])` for a `ZeroPaddedConv3D`'s
    kernel, padding and strides. By default the convolution is a 3D one (oneDNN
    runs it faster than the 2D lowerings below: measured, see the README). With
    `conv2d_only`, kernels that are really 2D or 1D run as 2D convolutions:
    1 x k x k over the `batch * T` frames, t x 1 x 1 over `(T, H * W)`, and
    1 x 1 x 1 as a temporal slice then a 1 x 1 2D convolution; this is exact,
    and the graph of a (2+1)D network then has no 3D convolution (for TFLite).

    Args:
        filters: output channels.
        kernel_size, strides, zero_padding: 3 ints each, as `ZeroPaddedConv3D`.
        relu: whether a ReLU ends the layer.
        residual: whether the layer takes `[x, residual]` and adds the residual
            before the ReLU.
        conv2d_only: lower 1 x k x k, t x 1 x 1 and 1 x 1 x 1 kernels to 2D convs.

    Input shape: `(batch, T, H, W, C)` (or a list with the residual, of the
    output's shape).
    Output shape: `(batch, T', H', W', filters)`.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1, 1), zero_padding=(0, 0, 0),
                 relu=False, residual=False, conv2d_only=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = tuple(kernel_size)
        self.strides = tuple(strides)
        self.zero_padding = tuple(zero_padding)
        self.relu = relu
        self.residual = residual
        self.conv2d_only = conv2d_only
        kt, kh, kw = self.kernel_size
        self.lowering = "3d"
        if conv2d_only and self.kernel_size == (1, 1, 1):
            self.lowering = "pointwise"
        elif conv2d_only and kt == 1:
            self.lowering = "spatial"
        elif conv2d_only and kh == kw == 1:
            self.lowering = "temporal"

    def build(self, input_shape):
        if self.residual:
            input_shape = input_shape[0]
        self.kernel = self.add_weight(
            shape=self.kernel_size + (input_shape[-1], self.filters), name="kernel", initializer="zeros"
        )
        self.bias = self.add_weight(shape=(self.filters,), name="bias", initializer="zeros")

    @staticmethod
    def _conv(x, kernel, strides, pads):
        """Convolution with PyTorch's symmetric zero padding (`torch_padding`)."""
        padding, pad_first = torch_padding(kernel.shape[:-2], strides, pads)
        if pad_first:
            x = pad_symmetric(x, pads)
        return ops.conv(x, kernel, strides, padding=padding)

    def call(self, inputs):
        x, residual = inputs if self.residual else (inputs, None)
        kernel = ops.cast(self.kernel, x.dtype)
        (st, sh, sw), (pt, ph, pw) = self.strides, self.zero_padding
        if self.lowering == "3d":
            return self._finish(self._conv(x, kernel, self.strides, self.zero_padding), residual)
        if self.lowering == "pointwise":  # a temporal slice, then a 1 x 1 conv per frame
            x = x[:, ::st]
        b, t, h, w, c = ops.shape(x)
        if self.lowering == "temporal":  # pixels folded into one axis: a (kt, 1) 2D conv
            y = self._conv(ops.reshape(x, (b, t, h * w, c)), kernel[:, :, 0], (st, 1), (pt, 0))
            y = self._finish(y, residual)
            return ops.reshape(y, (b, ops.shape(y)[1], h, w, self.filters))
        # frames folded into the batch: a 2D conv per frame
        y = self._conv(ops.reshape(x, (-1, h, w, c)), kernel[0], (sh, sw), (ph, pw))
        y = self._finish(y, residual)
        return ops.reshape(y, (b, t) + tuple(ops.shape(y)[1:]))

    def _finish(self, y, residual):
        """Bias, residual and ReLU on the conv's own output, where oneDNN fuses them."""
        bias = ops.cast(self.bias, y.dtype)
        if keras.backend.backend() == "tensorflow":  # BiasAdd, which TF's remapper fuses with the residual Add
            import tensorflow as tf

            y = tf.nn.bias_add(y, bias)
        else:
            y = y + bias
        if residual is not None:
            y = y + ops.reshape(residual, ops.shape(y))
        return ops.relu(y) if self.relu else y

    def compute_output_shape(self, input_shape):
        if self.residual:
            input_shape = input_shape[0]
        out = [input_shape[0]]
        for n, k, s, p in zip(input_shape[1:4], self.kernel_size, self.strides, self.zero_padding):
            out.append(None if n is None else (n + 2 * p - k) // s + 1)
        return tuple(out) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
            zero_padding=self.zero_padding, relu=self.relu, residual=self.residual,
            conv2d_only=self.conv2d_only,
        )
        return config


class _Builder:
    def __init__(self, dtype, conv2d_only):
        self.dtype = dtype
        self.conv2d_only = conv2d_only
        self.weights = []  # (layer, kernel, bias) to set once the graph is built

    def conv(self, x, conv, bn, relu, name, residual=None, extra_in=0, extra_out=0):
        """A FusedConv for `conv` + `bn`, with `extra_in` / `extra_out` zero channels."""
        if not isinstance(conv, ZeroPaddedConv3D):
            raise TypeError(f"Cannot fuse layer {conv.name!r} of type {type(conv).__name__}.")
        layer = FusedConv(
            conv.filters + extra_out, conv.kernel_size, conv.strides, conv.zero_padding, relu=relu,
            residual=residual is not None, conv2d_only=self.conv2d_only, name=name, dtype=self.dtype,
        )
        y = layer([x, residual] if residual is not None else x)
        kernel, bias = fold_batchnorm(conv, bn)
        kernel = np.pad(kernel, [(0, 0)] * 3 + [(0, extra_in), (0, extra_out)])
        self.weights.append((layer, kernel, np.pad(bias, (0, extra_out))))
        return y

    def unit(self, x, unit, bn, name, relu, residual=None):
        if not isinstance(unit, Conv2Plus1D):
            return self.conv(x, unit, bn, relu, name, residual)
        # The (2+1)D middle width (45, 230, 921...) rounded up to a multiple of 16 with zero
        # channels: exact (ReLU(0 + 0) = 0 meets zero weights), and oneDNN's AVX-512
        # kernels run such widths markedly faster (measured; see the README).
        extra = -unit.resolved_midplanes % CHANNEL_MULTIPLE
        x = self.conv(x, unit.spatial_conv, unit.spatial_bn, True, f"{name}_spatial", extra_out=extra)
        return self.conv(x, unit.temporal_conv, bn, relu, f"{name}_temporal", residual, extra_in=extra)

    def stem(self, x, stem):
        return self.unit(x, stem.conv, stem.bn, stem.name, relu=True)

    def block(self, x, block):
        shortcut = x
        if block.has_projection:
            shortcut = self.conv(x, block.shortcut_conv, block.shortcut_bn, False, f"{block.name}_shortcut")
        y = self.unit(x, block.conv1, block.bn1, f"{block.name}_conv1", relu=True)
        return self.unit(y, block.conv2, block.bn2, f"{block.name}_conv2", relu=True, residual=shortcut)


@keras.saving.register_keras_serializable(package=PACKAGE)
class InferenceGraph(keras.Model):
    """The inference graph of a `VideoResNet` (see `optimize_for_inference`).

    Its Keras config is the network's config plus `precision` and `conv2d_only`, so
    a `.keras` file of it reloads (the graph is rebuilt from the network's settings,
    then its weights are read), and it carries the network's `metadata`.
    """

    def __init__(self, network, precision="float32", conv2d_only=False, name=None, **kwargs):
        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}; expected one of {PRECISIONS}.")
        if isinstance(network, dict):  # from a config: the weights come afterwards
            network = VideoResNet.from_config(network)
        if not isinstance(network, VideoResNet):
            raise TypeError(
                f"optimize_for_inference takes a network built by keras_r21d (a VideoResNet: a factory, "
                f"get_model or a preset); received {type(network).__name__} {getattr(network, 'name', '')!r}. "
                "Optimise the keras_r21d backbone alone and wrap the result instead."
            )
        builder = _Builder("mixed_bfloat16" if precision == "bfloat16" else "float32", conv2d_only)
        inputs = keras.Input(network.input_shape[1:], name=network.inputs[0].name)
        x, clones = inputs, []
        for layer in [layer for layer in network.layers if not isinstance(layer, layers.InputLayer)]:
            if isinstance(layer, Stem):
                x = builder.stem(x, layer)
            elif isinstance(layer, BasicBlock):
                x = builder.block(x, layer)
            else:  # pooling, classifier: copies, run in the original's precision
                clone, weights = _clone(layer)
                x = clone(x)
                clones.append((clone, weights))
        super().__init__(inputs, x, name=name or f"{network.name}_inference", **kwargs)
        for layer, kernel, bias in builder.weights:
            layer.kernel.assign(kernel)
            layer.bias.assign(bias)
        for clone, weights in clones:
            clone.set_weights(weights)
        self._settings = json.dumps(dict(network=network.get_config(), precision=precision,
                                         conv2d_only=conv2d_only))

    @property
    def metadata(self):
        """The metadata of the network this graph was made from."""
        return json.loads(self._settings)["network"]["metadata"]

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, **json.loads(self._settings)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _clone(layer):
    clone = type(layer).from_config(layer.get_config())
    return clone, layer.get_weights()


def optimize_for_inference(model, precision="float32", conv2d_only=False):
    """A faster model for inference with the same inputs and outputs as `model`.

    Batch norm is folded into the convolutions, and each convolution runs with
    its bias, residual sum and ReLU fused (see `FusedConv`). The result computes
    what `model(x, training=False)` computes, to float32 rounding, and shares nothing with `model`: keep training the
    original, and call this again afterwards.

    Args:
        model: a network from `keras_r21d` (a `VideoResNet`: factory, `get_model`,
            a preset), with or without its top.
        precision: "float32", or "bfloat16" (convolutions in bfloat16, the
            classifier and outputs in float32; faster only on CPUs with fast
            bfloat16 matrix units, e.g. AMX).
        conv2d_only: run 1 x k x k, t x 1 x 1 and 1 x 1 x 1 convolutions as 2D
            ones: (2+1)D networks then need no 3D convolution (TFLite export).

    Returns:
        An `InferenceGraph` (a `keras.Model` carrying `model`'s config and
        metadata). Use it with `predict`, `predict_on_batch` or `__call__`.

    Example:
    >>> import keras_r21d
    >>> model = keras_r21d.R2Plus1D18(input_shape=(8, 32, 32, 3), classes=5)
    >>> fast = keras_r21d.optimize_for_inference(model)
    >>> fast.output_shape
    (None, 5)
    """
    return InferenceGraph(model, precision=precision, conv2d_only=conv2d_only)


def inference_model(model):
    """`optimize_for_inference(model)` for a keras_r21d network (a `VideoResNet`); any
    other model, an inference graph included, as it is.

    What the predict and evaluate commands run, so users get the fast graph
    without asking; float32, so the numbers are those of `model`.
    """
    return optimize_for_inference(model) if isinstance(model, VideoResNet) else model
