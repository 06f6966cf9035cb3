"""Keras layers of the video ResNets of Tran et al. (CVPR 2018).

Every layer works on channels_last clips `(batch, T, H, W, C)` and pads exactly as
PyTorch does, so weights ported from torchvision or the Caffe2 release give the
same numbers.

Composite layers (`Conv2Plus1D`, `BasicBlock`, `Stem`) expose `trace_shapes`, the
list of their convolutions with input and output shapes; `compute_output_shape` and
the MAC counter of `keras_r21d.models.complexity` both read it, so the shape arithmetic
lives in one place.
"""

import keras
from keras import layers, ops

PACKAGE = "keras_r21d"
CONV_TYPES = ("3d", "2d", "2plus1d")
STEM_TYPES = ("3d", "2d", "2plus1d", "r2d")
MIDPLANES_CONVENTIONS = ("per_conv", "per_block")

# torchvision initialises convs with He-normal over fan_out; it trains these nets well.
CONV_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}


def _triple(value, name):
    if isinstance(value, int):
        value = (value,) * 3
    value = tuple(value)
    if len(value) != 3 or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ValueError(
            f"`{name}` must be an int or 3 non-negative ints (T, H, W); received {value!r}."
        )
    return value


def midplanes(in_channels, out_channels, kernel_size=(3, 3, 3)):
    """Width M of the (2+1)D factorisation of a t x d x d convolution.

    M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out)), chosen so that the
    (2+1)D block has about the parameters of the 3D convolution it replaces
    (Tran et al. 2018, section 3.5). Which (N_in, N_out) pair is used is the
    convention: the paper and the Caffe2 release apply it to each convolution,
    torchvision once per residual block.

    Example:
    >>> midplanes(64, 64), midplanes(256, 512)
    (144, 921)
    """
    t, d = kernel_size[0], kernel_size[1]
    return (t * d * d * in_channels * out_channels) // (d * d * in_channels + t * out_channels)


def block_strides(conv_type, stride):
    """Strides of a block's first conv: 2D stages never stride in time."""
    return (1, stride, stride) if conv_type == "2d" else (stride, stride, stride)


def trace_shapes(layer, input_shape):
    """List of `(conv_or_dense_layer, input_shape, output_shape)` inside `layer`."""
    if hasattr(layer, "trace_shapes"):
        return layer.trace_shapes(input_shape)
    return [(layer, tuple(input_shape), tuple(layer.compute_output_shape(input_shape)))]


def _bn(epsilon, momentum, name):
    return layers.BatchNormalization(axis=-1, epsilon=epsilon, momentum=momentum, name=name)


def _check_rank(layer, input_shape):
    if len(input_shape) != 5:
        raise ValueError(
            f"Layer '{layer.name}' expects clips of shape (batch, T, H, W, channels); "
            f"received an input of shape {tuple(input_shape)}."
        )


def torch_padding(kernel_size, strides, zero_padding):
    """How to pad like PyTorch's symmetric `padding=zero_padding`: `(keras padding,
    pad explicitly first)`. Keras's "same" agrees where the stride is 1 and the pad
    (k - 1) / 2 (and needs no padded copy of the input); elsewhere it would put the
    extra zero after the data, so the input is padded on both sides, then "valid"."""
    if all(s == 1 and 2 * p == k - 1 for k, s, p in zip(kernel_size, strides, zero_padding)):
        return "same", False
    return "valid", any(zero_padding)


def pad_symmetric(x, zero_padding):
    """`x` (channels last, 5D) with `zero_padding` zeros on both sides of T, H and W."""
    return ops.pad(x, [(0, 0)] + [(p, p) for p in zero_padding] + [(0, 0)])


@keras.saving.register_keras_serializable(package=PACKAGE)
class ZeroPaddedConv3D(layers.Conv3D):
    """3D convolution with PyTorch's symmetric zero padding.

    Keras's "same" padding puts the extra zero after the data when a strided
    convolution needs an odd amount; PyTorch pads both sides equally. This layer
    pads like `torch.nn.Conv3d(padding=zero_padding)`: it uses Keras "same" where
    the two agree (stride 1, padding (k - 1) / 2), "valid" with no padding, and an
    explicit zero pad followed by "valid" otherwise.

    Args:
        filters: number of output channels.
        kernel_size: int or 3 ints (kT, kH, kW).
        strides: int or 3 ints.
        zero_padding: int or 3 ints, zeros added on both sides of T, H and W.
        **kwargs: other `keras.layers.Conv3D` arguments (`use_bias`, initializers...).

    Input shape: `(batch, T, H, W, C)`.
    Output shape: `(batch, T', H', W', filters)` with
        `T' = (T + 2 pT - kT) // sT + 1`, and so on for H and W.

    Example:
    >>> conv = ZeroPaddedConv3D(8, 3, strides=2, zero_padding=1)
    >>> tuple(conv(keras.ops.ones((1, 4, 8, 8, 3))).shape)
    (1, 2, 4, 4, 8)
    """

    def __init__(self, filters, kernel_size, strides=1, zero_padding=0, **kwargs):
        if kwargs.pop("padding", "valid") != "valid" or _triple(kwargs.get("dilation_rate", 1), "dilation_rate") != (1, 1, 1):
            raise ValueError(
                "ZeroPaddedConv3D sets its padding from `zero_padding` and has no dilation; "
                "use keras.layers.Conv3D for other padding modes."
            )
        kernel_size = _triple(kernel_size, "kernel_size")
        strides = _triple(strides, "strides")
        self.zero_padding = _triple(zero_padding, "zero_padding")
        padding, self._pad_explicitly = torch_padding(kernel_size, strides, self.zero_padding)
        kwargs.setdefault("data_format", "channels_last")
        super().__init__(filters, kernel_size, strides=strides, padding=padding, **kwargs)

    def call(self, inputs):
        if self._pad_explicitly:
            inputs = pad_symmetric(inputs, self.zero_padding)
        return super().call(inputs)

    def compute_output_shape(self, input_shape):
        _check_rank(self, input_shape)
        out = [input_shape[0]]
        for axis, (n, k, s, p) in enumerate(
            zip(input_shape[1:4], self.kernel_size, self.strides, self.zero_padding)
        ):
            if n is None:
                out.append(None)
                continue
            if n + 2 * p < k:
                raise ValueError(
                    f"Layer '{self.name}': input size {n} along {'THW'[axis]} is too small for "
                    f"kernel {k} with padding {p}; use a larger clip (at least {k - 2 * p})."
                )
            out.append((n + 2 * p - k) // s + 1)
        return tuple(out) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        del config["padding"]
        config["zero_padding"] = self.zero_padding
        return config


def conv3d(filters, kernel_size, strides, zero_padding, name):
    """The bias-free, He-initialised convolution every network here uses."""
    return ZeroPaddedConv3D(
        filters, kernel_size, strides=strides, zero_padding=zero_padding,
        use_bias=False, kernel_initializer=CONV_INITIALIZER, name=name,
    )


@keras.saving.register_keras_serializable(package=PACKAGE)
class Conv2Plus1D(layers.Layer):
    """(2+1)D convolution: a spatial 1 x d x d conv, BN, ReLU, a temporal t x 1 x 1 conv.

    Factorises a t x d x d 3D convolution into a spatial convolution to `midplanes`
    channels followed by a temporal one (Tran et al., "A Closer Look at
    Spatiotemporal Convolutions for Action Recognition", CVPR 2018). The spatial
    stride goes on the first conv, the temporal stride on the second; padding is
    (0, d // 2, d // 2) then (t // 2, 0, 0), as in PyTorch. Neither conv has a bias;
    the output is not normalised (the enclosing block applies its own BN).

    Args:
        filters: output channels N_out.
        kernel_size: int or (t, d, d) of the 3D conv being factorised.
        strides: int or (sT, sH, sW).
        midplanes: channels M between the two convs; `None` computes it per conv
            with `keras_r21d.models.layers.midplanes` from the input channels.
        bn_epsilon, bn_momentum: of the BN between the two convs (Keras momentum,
            i.e. 1 - PyTorch's).

    Input shape: `(batch, T, H, W, C)`.
    Output shape: `(batch, T', H', W', filters)`.

    Example:
    >>> layer = Conv2Plus1D(64, strides=2)
    >>> tuple(layer(keras.ops.ones((1, 8, 16, 16, 64))).shape)
    (1, 4, 8, 8, 64)
    >>> layer.resolved_midplanes
    144
    """

    def __init__(self, filters, kernel_size=3, strides=1, midplanes=None,
                 bn_epsilon=1e-3, bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = _triple(kernel_size, "kernel_size")
        self.strides = _triple(strides, "strides")
        if midplanes is not None and (not isinstance(midplanes, int) or midplanes <= 0):
            raise ValueError(f"`midplanes` must be a positive int or None; received {midplanes!r}.")
        self.midplanes = midplanes
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum

    def build(self, input_shape):
        _check_rank(self, input_shape)
        t, kh, kw = self.kernel_size
        self.resolved_midplanes = self.midplanes or midplanes(input_shape[-1], self.filters, self.kernel_size)
        self.spatial_conv = conv3d(
            self.resolved_midplanes, (1, kh, kw), (1,) + self.strides[1:], (0, kh // 2, kw // 2), "spatial_conv"
        )
        self.spatial_bn = _bn(self.bn_epsilon, self.bn_momentum, "spatial_bn")
        self.temporal_conv = conv3d(
            self.filters, (t, 1, 1), (self.strides[0], 1, 1), (t // 2, 0, 0), "temporal_conv"
        )
        self.spatial_conv.build(input_shape)
        mid_shape = self.spatial_conv.compute_output_shape(input_shape)
        self.spatial_bn.build(mid_shape)
        self.temporal_conv.build(mid_shape)

    def call(self, inputs, training=None):
        x = self.spatial_conv(inputs)
        x = ops.relu(self.spatial_bn(x, training=training))
        return self.temporal_conv(x)

    def trace_shapes(self, input_shape):
        first = trace_shapes(self.spatial_conv, input_shape)
        return first + trace_shapes(self.temporal_conv, first[-1][2])

    def compute_output_shape(self, input_shape):
        return self.trace_shapes(input_shape)[-1][2]

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
            midplanes=self.midplanes, bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum,
        )
        return config


def conv_unit(conv_type, filters, strides, midplanes_, bn_epsilon, bn_momentum, name):
    """A block's 3x3x3-equivalent convolution of the given type ("3d", "2d", "2plus1d")."""
    if conv_type == "3d":
        return conv3d(filters, 3, strides, 1, name)
    if conv_type == "2d":
        return conv3d(filters, (1, 3, 3), strides, (0, 1, 1), name)
    if conv_type == "2plus1d":
        return Conv2Plus1D(filters, 3, strides, midplanes_, bn_epsilon, bn_momentum, name=name)
    raise ValueError(f"Unknown conv type {conv_type!r}; expected one of {CONV_TYPES}.")


@keras.saving.register_keras_serializable(package=PACKAGE)
class BasicBlock(layers.Layer):
    """Residual basic block: conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU.

    The two convolutions are of `conv_type`: "3d" (3x3x3), "2d" (1x3x3) or
    "2plus1d" (`Conv2Plus1D`). The first carries the block's stride (1x2x2 in a
    2D stage: 2D stages never stride in time). The shortcut is a 1x1x1 conv +
    BN when the block changes the channel count or downsamples, identity
    otherwise (He et al. 2016, option B).

    Args:
        filters: output channels.
        conv_type: "3d", "2d" or "2plus1d".
        stride: 1 or 2, the spatial (and, outside 2D stages, temporal) stride.
        midplanes: for "2plus1d", "per_conv" (paper, Caffe2, ig65m: M from each
            conv's own channels) or "per_block" (torchvision: M from the block's
            input and output channels, for both convs).
        bn_epsilon, bn_momentum: of every BN (Keras momentum).

    Input shape: `(batch, T, H, W, C)`.
    Output shape: `(batch, T', H', W', filters)`.

    Example:
    >>> block = BasicBlock(128, "2plus1d", stride=2, midplanes="per_block")
    >>> tuple(block(keras.ops.ones((1, 8, 16, 16, 64))).shape)
    (1, 4, 8, 8, 128)
    """

    def __init__(self, filters, conv_type="3d", stride=1, midplanes="per_conv",
                 bn_epsilon=1e-3, bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        if conv_type not in CONV_TYPES:
            raise ValueError(f"Unknown conv_type {conv_type!r}; expected one of {CONV_TYPES}.")
        if midplanes not in MIDPLANES_CONVENTIONS:
            raise ValueError(
                f"Unknown midplanes convention {midplanes!r}; expected one of {MIDPLANES_CONVENTIONS}."
            )
        self.filters = filters
        self.conv_type = conv_type
        self.stride = stride
        self.midplanes = midplanes
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum

    def build(self, input_shape):
        _check_rank(self, input_shape)
        in_channels = input_shape[-1]
        strides = block_strides(self.conv_type, self.stride)
        mid1 = midplanes(in_channels, self.filters)
        mid2 = mid1 if self.midplanes == "per_block" else midplanes(self.filters, self.filters)
        unit = lambda mid, s, name: conv_unit(  # noqa: E731
            self.conv_type, self.filters, s, mid, self.bn_epsilon, self.bn_momentum, name
        )
        self.conv1 = unit(mid1, strides, "conv1")
        self.bn1 = _bn(self.bn_epsilon, self.bn_momentum, "bn1")
        self.conv2 = unit(mid2, 1, "conv2")
        self.bn2 = _bn(self.bn_epsilon, self.bn_momentum, "bn2")
        self.has_projection = in_channels != self.filters or self.stride != 1
        if self.has_projection:
            self.shortcut_conv = conv3d(self.filters, 1, strides, 0, "shortcut_conv")
            self.shortcut_bn = _bn(self.bn_epsilon, self.bn_momentum, "shortcut_bn")
        self.conv1.build(input_shape)
        mid_shape = self.conv1.compute_output_shape(input_shape)
        self.bn1.build(mid_shape)
        self.conv2.build(mid_shape)
        self.bn2.build(mid_shape)
        if self.has_projection:
            self.shortcut_conv.build(input_shape)
            self.shortcut_bn.build(mid_shape)

    def call(self, inputs, training=None):
        x = ops.relu(self.bn1(self.conv1(inputs), training=training))
        x = self.bn2(self.conv2(x), training=training)
        shortcut = inputs
        if self.has_projection:
            shortcut = self.shortcut_bn(self.shortcut_conv(inputs), training=training)
        return ops.relu(x + shortcut)

    def trace_shapes(self, input_shape):
        first = trace_shapes(self.conv1, input_shape)
        second = trace_shapes(self.conv2, first[-1][2])
        shortcut = trace_shapes(self.shortcut_conv, input_shape) if self.has_projection else []
        return shortcut + first + second

    def compute_output_shape(self, input_shape):
        return self.trace_shapes(input_shape)[-1][2]

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, conv_type=self.conv_type, stride=self.stride,
            midplanes=self.midplanes, bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class Stem(layers.Layer):
    """The first layer (conv1) of a video ResNet: conv, BN, ReLU; no max-pool.

    Kinds, all with spatial stride 2 and 7x7 spatial kernels:
      - "3d": 3x7x7 conv, padding (1, 3, 3) (R3D, MCx);
      - "2d": 1x7x7 conv, each frame alone (f-R2D, rMCx);
      - "2plus1d": `Conv2Plus1D` with kernel (3, 7, 7) and a fixed `midplanes`
        of 45 (R(2+1)D, every implementation), then BN and ReLU;
      - "r2d": an L x 7 x 7 conv without temporal padding over exactly L = `frames`
        frames, so time collapses to 1 (R2D: the clip as 3L input channels).

    Args:
        kind: one of "3d", "2d", "2plus1d", "r2d".
        filters: output channels (64 in every network of the paper).
        frames: the clip length L, required for "r2d" only.
        midplanes: width between the (2+1)D stem's two convs.
        bn_epsilon, bn_momentum: of the BNs (Keras momentum).

    Input shape: `(batch, T, H, W, C)` (T must equal `frames` for "r2d").
    Output shape: `(batch, T', H / 2, W / 2, filters)` with T' = 1 for "r2d", T otherwise.

    Example:
    >>> tuple(Stem("r2d", frames=8)(keras.ops.ones((1, 8, 32, 32, 3))).shape)
    (1, 1, 16, 16, 64)
    """

    def __init__(self, kind="3d", filters=64, frames=None, midplanes=45,
                 bn_epsilon=1e-3, bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        if kind not in STEM_TYPES:
            raise ValueError(f"Unknown stem kind {kind!r}; expected one of {STEM_TYPES}.")
        if kind == "r2d" and (not isinstance(frames, int) or frames <= 0):
            raise ValueError(
                f"The R2D stem convolves over the whole clip, so it needs `frames`, the clip "
                f"length (a positive int); received frames={frames!r}."
            )
        self.kind = kind
        self.filters = filters
        self.frames = frames
        self.midplanes = midplanes
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum

    def _check_frames(self, shape):
        if self.kind == "r2d" and shape[1] is not None and shape[1] != self.frames:
            raise ValueError(
                f"R2D's first layer spans exactly {self.frames} frames (time collapses to 1), "
                f"so it takes clips of {self.frames} frames; received {shape[1]}. Build the "
                f"network with frames={shape[1]} (or input_shape=({shape[1]}, H, W, 3)), or "
                f"sample {self.frames}-frame clips."
            )

    def build(self, input_shape):
        _check_rank(self, input_shape)
        self._check_frames(input_shape)
        if self.kind == "2plus1d":
            self.conv = Conv2Plus1D(
                self.filters, (3, 7, 7), (1, 2, 2), self.midplanes, self.bn_epsilon, self.bn_momentum,
                name="conv",
            )
        else:
            kt, pt = {"3d": (3, 1), "2d": (1, 0), "r2d": (self.frames, 0)}[self.kind]
            self.conv = conv3d(self.filters, (kt, 7, 7), (1, 2, 2), (pt, 3, 3), "conv")
        self.bn = _bn(self.bn_epsilon, self.bn_momentum, "bn")
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        self._check_frames(inputs.shape)
        return ops.relu(self.bn(self.conv(inputs), training=training))

    def trace_shapes(self, input_shape):
        self._check_frames(input_shape)
        return trace_shapes(self.conv, input_shape)

    def compute_output_shape(self, input_shape):
        return self.trace_shapes(input_shape)[-1][2]

    def get_config(self):
        config = super().get_config()
        config.update(
            kind=self.kind, filters=self.filters, frames=self.frames, midplanes=self.midplanes,
            bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum,
        )
        return config
