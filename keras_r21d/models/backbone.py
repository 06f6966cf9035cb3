"""One builder for every network of the paper: the networks are data.

A video ResNet is a stem, four stages of basic blocks, a global average pool and
a classifier. R2D, f-R2D, R3D, MCx, rMCx and R(2+1)D differ only in the stem kind
and in the conv type of each stage (Tran et al. 2018, Table 1 and Figure 1).
"""

import json

import keras
from keras import layers

from keras_r21d.models.layers import (
    CONV_TYPES,
    MIDPLANES_CONVENTIONS,
    PACKAGE,
    STEM_TYPES,
    BasicBlock,
    Stem,
)

# Stem kind and the conv type of conv2_x..conv5_x for each architecture of the paper.
ARCHITECTURES = {
    "r2d": ("r2d", ("2d", "2d", "2d", "2d")),
    "fr2d": ("2d", ("2d", "2d", "2d", "2d")),
    "r3d": ("3d", ("3d", "3d", "3d", "3d")),
    "mc2": ("3d", ("2d", "2d", "2d", "2d")),
    "mc3": ("3d", ("3d", "2d", "2d", "2d")),
    "mc4": ("3d", ("3d", "3d", "2d", "2d")),
    "mc5": ("3d", ("3d", "3d", "3d", "2d")),
    "rmc2": ("2d", ("3d", "3d", "3d", "3d")),
    "rmc3": ("2d", ("2d", "3d", "3d", "3d")),
    "rmc4": ("2d", ("2d", "2d", "3d", "3d")),
    "rmc5": ("2d", ("2d", "2d", "2d", "3d")),
    "r2plus1d": ("2plus1d", ("2plus1d", "2plus1d", "2plus1d", "2plus1d")),
}

# Basic blocks per stage for each depth (He et al. 2016; 16 and 26 from Tran et al.).
DEPTHS = {10: (1, 1, 1, 1), 16: (2, 2, 2, 1), 18: (2, 2, 2, 2), 26: (2, 3, 4, 3), 34: (3, 4, 6, 3)}

DEFAULT_WIDTHS = (64, 128, 256, 512)
DEFAULT_FRAMES = 16


def stage_names(num_stages=4):
    """Names of the stage outputs, as in the paper: conv1 (stem), conv2 .. conv5."""
    return ["conv1"] + [f"conv{i + 2}" for i in range(num_stages)]


def block_name(stage, block):
    """Keras name of block `block` (0-based) of stage `stage` (0-based): conv2_1 ..."""
    return f"conv{stage + 2}_{block + 1}"


def _check_positive_ints(values, what):
    values = tuple(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"`{what}` must be positive ints; received {values!r}.")
    return values


def resolve_input_shape(input_shape, input_tensor, frames, stem):
    """Validates and completes `(T, H, W, C)`; R2D's T must be its `frames`."""
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    if input_shape is None:
        t = frames if frames is not None else (DEFAULT_FRAMES if stem == "r2d" else None)
        input_shape = (t, None, None, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 4:
        raise ValueError(
            f"`input_shape` must be (frames, height, width, channels), channels last; "
            f"received {input_shape!r}."
        )
    for dim, what in zip(input_shape, ("frames", "height", "width", "channels")):
        if dim is not None and (not isinstance(dim, int) or dim <= 0):
            raise ValueError(
                f"`input_shape` {what} must be a positive int (or None for any size); received "
                f"{dim!r} in {input_shape!r}."
            )
    if input_shape[3] is None:
        raise ValueError(f"`input_shape` must fix the channel count; received {input_shape!r}.")
    if input_tensor is not None and tuple(input_tensor.shape[1:]) != input_shape:
        raise ValueError(
            f"`input_tensor` has shape {tuple(input_tensor.shape)} but `input_shape` is "
            f"{input_shape!r}; pass one of them, or make them agree."
        )
    t = input_shape[0]
    if frames is not None and t is not None and t != frames:
        raise ValueError(
            f"`frames`={frames} disagrees with the clip length {t} of `input_shape` {input_shape!r}."
        )
    if stem == "r2d" and t is None:
        raise ValueError(
            "R2D's first layer spans the whole clip, so its frame count must be fixed; received "
            f"input_shape {input_shape!r}. Pass frames=8 or 16 (or input_shape=(16, H, W, 3))."
        )
    return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class VideoResNet(keras.Model):
    """A video ResNet of Tran et al. (CVPR 2018): a functional `keras.Model` whose
    Keras config is its settings, so `.keras` files, presets and inference graphs
    rebuild it from them.

    Args:
        stem: "3d" (3x7x7), "2d" (1x7x7), "2plus1d" ((2+1)D with 45 mid channels)
            or "r2d" (frames x 7 x 7 without temporal padding: time collapses to 1).
        stages: conv type of each stage, "3d", "2d" or "2plus1d".
        blocks: basic blocks per stage, e.g. (2, 2, 2, 2) for 18 layers.
        widths: channels of each stage.
        midplanes: "per_conv" (paper, Caffe2, ig65m) or "per_block" (torchvision),
            the width convention of (2+1)D convs.
        stem_midplanes: channels between the (2+1)D stem's convs (45 everywhere).
        frames: clip length; required by the "r2d" stem (default 16), optional
            otherwise (the network then takes any frame count).
        bn_epsilon, bn_momentum: BN settings (Keras momentum = 1 - PyTorch's);
            Caffe2 and ig65m use epsilon 1e-3, torchvision 1e-5.
        include_top: whether to end with the classifier.
        input_tensor: optional Keras tensor to use as the input (the config
            keeps its shape).
        input_shape: `(T, H, W, C)`; `None` entries allow any size.
        pooling: without the top, None (5D output of conv5), "avg" or "max".
        classes: number of classes of the classifier.
        classifier_activation: activation of the classifier (None for logits).
        dropout: rate of a dropout layer before the classifier, active in training
            only (0: none; mmaction2's R(2+1)D head uses 0.5).
        metadata: what a user of the weights needs (class names, preprocessing,
            clip length, source), JSON-ready; presets fill it, `model.metadata`
            reads it.
        name: model name.

    Call it on `(batch, T, H, W, C)` clips.
    """

    def __init__(
        self,
        stem="3d",
        stages=("3d", "3d", "3d", "3d"),
        blocks=(2, 2, 2, 2),
        widths=DEFAULT_WIDTHS,
        midplanes="per_conv",
        stem_midplanes=45,
        frames=None,
        bn_epsilon=1e-3,
        bn_momentum=0.9,
        include_top=True,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=400,
        classifier_activation="softmax",
        dropout=0.0,
        metadata=None,
        name="video_resnet",
        **kwargs,
    ):
        if stem not in STEM_TYPES:
            raise ValueError(f"Unknown stem {stem!r}; expected one of {STEM_TYPES}.")
        stages = tuple(stages)
        for conv_type in stages:
            if conv_type not in CONV_TYPES:
                raise ValueError(f"Unknown stage conv type {conv_type!r} in {stages!r}; expected {CONV_TYPES}.")
        blocks = _check_positive_ints(blocks, "blocks")
        widths = _check_positive_ints(widths, "widths")
        if not len(stages) == len(blocks) == len(widths):
            raise ValueError(
                f"`stages`, `blocks` and `widths` need one entry per stage; received {len(stages)}, "
                f"{len(blocks)} and {len(widths)} entries."
            )
        if midplanes not in MIDPLANES_CONVENTIONS:
            raise ValueError(f"Unknown midplanes convention {midplanes!r}; expected one of {MIDPLANES_CONVENTIONS}.")
        if frames is not None:
            _check_positive_ints([frames], "frames")
        if pooling not in (None, "avg", "max"):
            raise ValueError(f"`pooling` must be None, 'avg' or 'max'; received {pooling!r}.")
        if include_top and (not isinstance(classes, int) or isinstance(classes, bool) or classes <= 0):
            raise ValueError(f"`classes` must be a positive int when include_top=True; received {classes!r}.")
        if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1):
            raise ValueError(f"`dropout` must be a rate in [0, 1); received {dropout!r}.")
        if dropout and not include_top:
            raise ValueError(f"`dropout` ({dropout}) goes before the classifier; with include_top=False there "
                             "is none. Leave it out, or add a Dropout layer to your own head.")
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(f"`metadata` must be a dict (or None); received {type(metadata).__name__}.")

        input_shape = resolve_input_shape(input_shape, input_tensor, frames, stem)
        if stem == "r2d":
            frames = input_shape[0]
        inputs = input_tensor if input_tensor is not None else keras.Input(input_shape, name="clip")

        common = dict(bn_epsilon=bn_epsilon, bn_momentum=bn_momentum)
        x = Stem(stem, widths[0], frames=frames if stem == "r2d" else None, midplanes=stem_midplanes,
                 name="conv1", **common)(inputs)
        for s, (conv_type, num_blocks, width) in enumerate(zip(stages, blocks, widths)):
            for b in range(num_blocks):
                stride = 2 if s > 0 and b == 0 else 1
                x = BasicBlock(width, conv_type, stride, midplanes, name=block_name(s, b), **common)(x)

        if include_top:
            x = layers.GlobalAveragePooling3D(name="avg_pool")(x)
            if dropout:
                x = layers.Dropout(dropout, name="dropout")(x)
            x = layers.Dense(
                classes, activation=classifier_activation, name="fc",
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            )(x)
        elif pooling == "avg":
            x = layers.GlobalAveragePooling3D(name="avg_pool")(x)
        elif pooling == "max":
            x = layers.GlobalMaxPooling3D(name="max_pool")(x)
        super().__init__(inputs, x, name=name, **kwargs)

        if classifier_activation is not None and not isinstance(classifier_activation, str):
            classifier_activation = keras.activations.serialize(classifier_activation)
        try:
            json.dumps(metadata or {})
        except TypeError as error:
            raise ValueError(f"`metadata` must hold plain JSON values (str, numbers, lists, dicts): {error}.") from None
        # Plain JSON values, stored outside Keras's attribute tracking. The dtype policy is the
        # one the layers were built under (the global one), restored by from_config.
        self._settings = json.dumps(dict(
            dtype_policy=keras.config.dtype_policy().name, stem=stem, stages=list(stages), blocks=list(blocks), widths=list(widths), midplanes=midplanes,
            stem_midplanes=stem_midplanes, frames=frames, bn_epsilon=bn_epsilon, bn_momentum=bn_momentum,
            include_top=include_top, input_shape=list(input_shape), pooling=pooling, classes=classes,
            classifier_activation=classifier_activation, dropout=dropout, metadata=metadata or {},
        ))

    @property
    def metadata(self):
        """What the weights' user needs: class names, preprocessing, clip length, source
        (a copy: the model's own is set when it is built, e.g. by `load_preset`)."""
        return json.loads(self._settings)["metadata"]

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, **json.loads(self._settings)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        wanted, current = config.pop("dtype_policy", None), keras.config.dtype_policy()
        if wanted is not None and wanted != current.name:
            keras.config.set_dtype_policy(wanted)  # the layers take the policy in force when built
        try:
            return cls(**config)
        finally:
            keras.config.set_dtype_policy(current)


def stage_layers(model):
    """`{"conv1": [stem], "conv2": [conv2_1, ...], ...}`: the layers of each stage of a
    keras_r21d network, in order (the last one gives the stage's output)."""
    stages = {}
    for layer in model.layers:
        if layer.name == "conv1" or isinstance(layer, BasicBlock):
            stages.setdefault(layer.name.split("_")[0], []).append(layer)
    if "conv1" not in stages:
        raise ValueError(
            f"Model {model.name!r} has no 'conv1' stem layer: it is not a network built by keras_r21d "
            "(VideoResNet or a factory)."
        )
    return stages


def stage_feature_model(model):
    """A model with the same input that returns the output of every stage.

    Returns a `keras.Model` whose output is a dict `{"conv1": ..., "conv2": ...,
    ..., "conv5": ...}` of 5D feature maps, sharing weights with `model`
    (any network built by `VideoResNet` or the factories).

    Example:
    >>> import keras_r21d
    >>> features = keras_r21d.stage_feature_model(keras_r21d.R3D18(input_shape=(8, 32, 32, 3)))
    >>> maps = features(keras.ops.ones((1, 8, 32, 32, 3)))
    >>> {name: tuple(x.shape) for name, x in maps.items()}["conv5"]
    (1, 1, 2, 2, 512)
    """
    outputs = {stage: layers[-1].output for stage, layers in stage_layers(model).items()}
    return keras.Model(model.input, outputs, name=f"{model.name}_stages")
