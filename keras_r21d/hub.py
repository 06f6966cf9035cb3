"""The paper's networks as keras-hub models (the `keras-r21d[hub]` extra): `import keras_r21d.hub`.

- `R21DBackbone`: a `keras_hub.models.Backbone`, a network of the paper up to conv5 (no
  pooling), whose config is its constructor's arguments: the registry name (or the
  table: stem, stage conv types, blocks), widths, midplanes and frames.
- `VideoClassifier`: a keras-hub task for clips (keras-hub has none yet): backbone, global
  pooling over time and space, dropout, a dense head; `R21DVideoClassifier` is it on
  `R21DBackbone`.
- `R21DVideoConverter` and `R21DVideoClassifierPreprocessor`: uint8 (or 0..255) clips ->
  the preset's resize, centre crop and mean/std normalisation (`preprocess_input`).

A keras_r21d preset directory (converted, or written by `finetune`) is also a keras-hub
backbone preset: its config.json is `R21DBackbone`'s serialized config
(`presets.files.HUB_BACKBONE`) and its weights file holds the backbone's weights, plus the
classifier, which a backbone does not read. `R21DVideoClassifier.from_preset` loads such
a preset with its classifier; `save_to_preset` writes keras-hub's layout (task.json,
task.weights.h5, preprocessor.json, ...), which `keras_hub.upload_preset` publishes and
`from_preset` loads back. The `keras.applications`-style factories share the same weights
(`R21DVideoClassifier.from_network(keras_r21d.get_model(...))`).

keras-hub runs a task's preprocessor inside tf.data; the converter is written with
`keras.ops`, so tasks with a preprocessor run on the TensorFlow backend (on JAX or
PyTorch, give the task preprocessed clips and `preprocessor=None`).
"""

import json
import os

import keras
from keras_hub.layers import VideoConverter
from keras_hub.models import Backbone, Preprocessor, Task
from keras_hub.src.utils.preset_utils import check_file_exists, load_json
from keras_hub.src.utils.python_utils import classproperty
from keras_hub.src.utils.tensor_utils import preprocessing_function

from keras_r21d.data.preprocessing import (
    CROP,
    KINETICS_MEAN,
    KINETICS_STD,
    RESIZE,
    preprocess_input,
    stored_preprocessing_of,
)
from keras_r21d.models import ARCHITECTURES, DEPTHS, MODELS, VideoResNet, check_name, metadata_of, registered_name
from keras_r21d.models.backbone import DEFAULT_WIDTHS

PACKAGE = "keras_r21d"
TABLE = ("stem", "stages", "blocks")
# The VideoResNet settings a backbone takes besides its name or table.
SETTINGS = ("widths", "midplanes", "stem_midplanes", "frames", "bn_epsilon", "bn_momentum", "input_shape")


def _named_preset(preset):
    """A keras_r21d preset name (weights/presets.json) -> its local directory; anything
    else (a directory, hf://, kaggle://) as given, for keras-hub to read."""
    from keras_r21d import presets

    if isinstance(preset, str) and preset in {entry["name"] for entry in presets.list_presets()}:
        return str(presets.fetch_preset(preset))
    return preset


def _manifest_presets():
    """keras-hub's `presets` listing of the published keras_r21d presets."""
    from keras_r21d import presets

    return {entry["name"]: {"metadata": {"description": entry["description"], "path": entry["architecture"],
                                         "params": None}, "architecture": entry["architecture"]}
            for entry in presets.list_presets()}


@keras.saving.register_keras_serializable(package=PACKAGE)
class R21DBackbone(Backbone):
    """A network of Tran et al. (CVPR 2018) as a keras-hub backbone: clips -> conv5 features.

    Args:
        architecture: a registry name such as "r2plus1d_18" (see `keras_r21d.list_models`),
            or None with `stem`, `stages` and `blocks` (a network outside the registry).
        stem, stages, blocks: the table, as `keras_r21d.VideoResNet` takes it.
        widths, midplanes, stem_midplanes, frames, bn_epsilon, bn_momentum: as
            `keras_r21d.VideoResNet`.
        input_shape: `(T, H, W, 3)`, None entries for any size (default: any clip).
        dtype: the dtype policy of the layers (keras-hub's convention).

    Output: `(batch, T', H', W', widths[-1])`, the conv5 map.
    """

    def __init__(self, architecture=None, stem=None, stages=None, blocks=None, widths=DEFAULT_WIDTHS,
                 midplanes="per_conv", stem_midplanes=45, frames=None, bn_epsilon=1e-3, bn_momentum=0.9,
                 input_shape=None, dtype=None, **kwargs):
        table = {"stem": stem, "stages": stages, "blocks": blocks}
        if architecture is not None:
            check_name(architecture)
            given = [key for key, value in table.items() if value is not None]
            if given:
                raise ValueError(f"architecture={architecture!r} comes with its own table; leave out {given}.")
            arch, depth = MODELS[architecture]
            table = dict(zip(TABLE, (*ARCHITECTURES[arch], DEPTHS[depth])))
        elif None in table.values():
            raise ValueError("Give a registered `architecture`, or `stem`, `stages` and `blocks`; received "
                             f"{table}.")
        # The layers take the dtype policy in force when they are built.
        current = keras.config.dtype_policy()
        if dtype is not None:
            keras.config.set_dtype_policy(keras.dtype_policies.get(dtype))
        try:
            network = VideoResNet(**table, widths=widths, midplanes=midplanes, stem_midplanes=stem_midplanes,
                                  frames=frames, bn_epsilon=bn_epsilon, bn_momentum=bn_momentum, include_top=False,
                                  input_shape=input_shape)
        finally:
            keras.config.set_dtype_policy(current)
        super().__init__(inputs=network.input, outputs=network.output, dtype=dtype, **kwargs)
        settings = network.get_config()
        # Plain JSON, outside Keras's attribute tracking (as VideoResNet keeps its own).
        self._settings = json.dumps({
            "architecture": architecture, **({} if architecture else {key: settings[key] for key in TABLE}),
            **{key: settings[key] for key in SETTINGS}})

    def get_config(self):
        return {**super().get_config(), **json.loads(self._settings)}

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `from_preset`, which also takes the keras_r21d preset names."""
        return super().from_preset(_named_preset(preset), load_weights=load_weights, **kwargs)

    @classproperty
    def presets(cls):
        return _manifest_presets()


@keras.saving.register_keras_serializable(package=PACKAGE)
class R21DVideoConverter(VideoConverter):
    """uint8 (or 0..255 float) clips `(batch, T, H, W, 3)` -> the network's input: frames
    resized to `resize` (bilinear, PyTorch's arithmetic), centre-cropped to `crop`, scaled
    to [0, 1] and normalised by `mean` and `std` (`keras_r21d.preprocess_input`)."""

    backbone_cls = R21DBackbone

    def __init__(self, resize=RESIZE, crop=CROP, mean=KINETICS_MEAN, std=KINETICS_STD, **kwargs):
        # Not VideoConverter.__init__, which builds an image converter this one does not use.
        super(VideoConverter, self).__init__(**kwargs)
        self.resize = None if resize is None else list(resize)
        self.crop, self.mean, self.std = crop, list(mean), list(std)

    @preprocessing_function
    def call(self, inputs):
        return preprocess_input(inputs, self.resize, self.crop, self.mean, self.std)

    def get_config(self):
        return {**super(VideoConverter, self).get_config(), "resize": self.resize, "crop": self.crop,
                "mean": self.mean, "std": self.std}


class VideoClassifierPreprocessor(Preprocessor):
    """A keras-hub preprocessor for video classification: its `video_converter` on the clips,
    labels and sample weights passed through."""

    def __init__(self, video_converter=None, **kwargs):
        super().__init__(**kwargs)
        self.video_converter = video_converter

    @preprocessing_function
    def call(self, x, y=None, sample_weight=None):
        if self.video_converter:
            x = self.video_converter(x)
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)


@keras.saving.register_keras_serializable(package=PACKAGE)
class R21DVideoClassifierPreprocessor(VideoClassifierPreprocessor):
    """`VideoClassifierPreprocessor` with the `R21DVideoConverter` of a preset: its own
    preprocessing (metadata.json) when it has no video_converter.json."""

    backbone_cls = R21DBackbone
    video_converter_cls = R21DVideoConverter

    @classmethod
    def _add_missing_kwargs(cls, loader, kwargs):
        if "video_converter" not in kwargs and not check_file_exists(loader.preset, "video_converter.json"):
            kwargs["video_converter"] = R21DVideoConverter(**stored_preprocessing_of(_metadata(loader.preset)))
        return super()._add_missing_kwargs(loader, kwargs)


def _metadata(preset):
    return load_json(preset, "metadata.json") if check_file_exists(preset, "metadata.json") else {}


class VideoClassifier(Task):
    """A keras-hub task that classifies clips: `backbone` -> global pooling over time and
    space -> dropout -> a dense layer of `num_classes` (logits by default, as keras-hub's
    `ImageClassifier`).

    Args:
        backbone: a keras-hub backbone whose output is `(batch, T, H, W, C)`.
        num_classes: classes of the head.
        preprocessor: a `VideoClassifierPreprocessor`, or None (the task then takes
            preprocessed clips).
        pooling: "avg" or "max".
        activation: of the head; None returns logits.
        dropout: rate of the dropout before the head.
        head_dtype: dtype policy of the head (default: the backbone's).
    """

    def __init__(self, backbone, num_classes, preprocessor=None, pooling="avg", activation=None, dropout=0.0,
                 head_dtype=None, **kwargs):
        head_dtype = head_dtype or backbone.dtype_policy
        pools = {"avg": keras.layers.GlobalAveragePooling3D, "max": keras.layers.GlobalMaxPooling3D}
        if pooling not in pools:
            raise ValueError(f"`pooling` must be 'avg' or 'max'; received {pooling!r}.")
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.pooler = pools[pooling](dtype=head_dtype, name="pooler")
        self.output_dropout = keras.layers.Dropout(dropout, dtype=head_dtype, name="output_dropout")
        self.output_dense = keras.layers.Dense(num_classes, activation=activation, dtype=head_dtype,
                                               kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                                               name="predictions")
        inputs = backbone.input
        outputs = self.output_dense(self.output_dropout(self.pooler(backbone(inputs))))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.num_classes, self.pooling, self.activation, self.dropout = num_classes, pooling, activation, dropout

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "pooling": self.pooling,
                "activation": keras.activations.serialize(keras.activations.get(self.activation))
                if self.activation is not None and not isinstance(self.activation, str) else self.activation,
                "dropout": self.dropout}

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """keras-hub's defaults, as `ImageClassifier`: Adam(5e-5), sparse cross-entropy (from
        logits unless the head ends in a softmax), sparse categorical accuracy."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(5e-5)
        if loss == "auto":
            # The default compile runs inside __init__, before the activation is stored.
            softmax = keras.activations.get(getattr(self, "activation", None)) is keras.activations.softmax
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax)
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy()]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class R21DVideoClassifier(VideoClassifier):
    """`VideoClassifier` on an `R21DBackbone`.

    Args:
        metadata: what a user of the weights needs, JSON-ready (class names under
            `labels`, preprocessing, clip length): a preset's metadata.json. Kept in
            the task's config, so it survives `save_to_preset` (whose metadata.json
            is keras-hub's own); `metadata` reads it.
        Others: see `VideoClassifier`.

    Example:
        classifier = R21DVideoClassifier.from_preset("r2plus1d_18_kinetics400_torchvision", num_classes=101)
        classifier.fit(clips, labels)  # uint8 clips (batch, T, H, W, 3), resized and cropped by the preprocessor
    """

    backbone_cls = R21DBackbone
    preprocessor_cls = R21DVideoClassifierPreprocessor

    def __init__(self, *args, metadata=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._metadata = json.dumps(metadata or {})  # plain JSON, outside Keras's attribute tracking

    @property
    def metadata(self):
        """A copy of the weights' metadata (class names under `labels`, preprocessing...)."""
        return json.loads(self._metadata)

    def get_config(self):
        return {**super().get_config(), "metadata": self.metadata}

    @classmethod
    def from_network(cls, model, preprocessor="auto", activation=None, dropout=None):
        """The task of a keras_r21d network with its classifier (`get_model`, a factory,
        `load_preset`): the same weights, copied. `preprocessor="auto"` builds the
        network's own preprocessing (its metadata); `dropout` defaults to the network's."""
        if not isinstance(model, VideoResNet) or not model.get_config()["include_top"]:
            raise TypeError("from_network takes a keras_r21d network with its classifier (include_top=True).")
        config = model.get_config()
        architecture = registered_name(config)
        backbone = R21DBackbone(
            architecture=architecture, **({} if architecture else {key: config[key] for key in TABLE}),
            **{key: config[key] for key in SETTINGS}, dtype=config["dtype_policy"])
        for layer in backbone.layers:
            if layer.weights:
                layer.set_weights(model.get_layer(layer.name).get_weights())
        if preprocessor == "auto":
            preprocessor = R21DVideoClassifierPreprocessor(R21DVideoConverter(**stored_preprocessing_of(metadata_of(model))))
        task = cls(backbone, config["classes"], preprocessor=preprocessor, activation=activation,
                   dropout=config["dropout"] if dropout is None else dropout, metadata=metadata_of(model))
        task.output_dense.set_weights(model.get_layer("fc").get_weights())
        return task

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Loads a keras_r21d preset (a name of `presets`, a directory, hf://) with its
        classifier, or a task saved by `save_to_preset` (keras-hub's layout).

        `num_classes` other than the preset's gives a new, randomly initialised head
        (fine-tuning); the other arguments are the task's (`activation`, `dropout`,
        `preprocessor`).
        """
        preset = _named_preset(preset)
        if check_file_exists(preset, "task.json"):  # saved by keras-hub
            return super().from_preset(preset, load_weights=load_weights, **kwargs)
        from keras_r21d.presets import resolve_weights
        from keras_r21d.presets.files import load_preset, read_config, read_metadata

        directory = resolve_weights(os.fspath(preset), None)
        num_classes = kwargs.pop("num_classes", None)
        if not load_weights:
            settings = read_config(directory)
            backbone = R21DBackbone(**{k: v for k, v in settings.items() if k != "classes"})
            metadata = read_metadata(directory)
            if num_classes not in (None, settings["classes"]):
                metadata.pop("labels", None)  # they name the preset's classes
            metadata.update(kwargs.pop("metadata", None) or {})
            preprocessor = kwargs.pop("preprocessor", None) or R21DVideoClassifierPreprocessor(
                R21DVideoConverter(**stored_preprocessing_of(metadata)))
            return cls(backbone, num_classes or settings["classes"], preprocessor=preprocessor, metadata=metadata,
                       **kwargs)
        model = load_preset(directory, classes=num_classes, classifier_activation=None,
                            metadata=kwargs.pop("metadata", None))
        return cls.from_network(model, **kwargs)

    @classproperty
    def presets(cls):
        return _manifest_presets()
