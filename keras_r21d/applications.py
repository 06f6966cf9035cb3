"""Where networks meet weights: `get_model`, `list_models` and the
`keras.applications`-style factories (`keras_r21d.R2Plus1D18(weights="kinetics400")`)."""

import fnmatch
import os

from keras_r21d.models import MODELS, build_network, check_name, display_name
from keras_r21d.presets import pretrained_models, resolve_weights
from keras_r21d.presets.files import check_weights_file, load_preset


def list_models(pattern=None, pretrained=None):
    """Names of the registered networks, optionally filtered.

    Args:
        pattern: a glob on names, e.g. "mc*".
        pretrained: a weights alias, e.g. "kinetics400": only the networks that
            have such pretrained weights (`keras_r21d.presets.pretrained_models`
            tells at which clip lengths).

    Example:
    >>> list_models("mc*")
    ['mc2_18', 'mc3_18', 'mc4_18', 'mc5_18']
    >>> len(list_models(pretrained="kinetics400"))
    13
    """
    names = list(MODELS)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if pretrained is not None:
        available = pretrained_models(pretrained)
        names = [n for n in names if n in available]
    return names


def build_model(model_name, weights=None, **kwargs):
    """Builds the registered network `model_name` with `weights`; see `get_model`."""
    check_name(model_name)
    if weights is not None and not _is_weights_file(weights):
        return _from_preset(model_name, weights, **kwargs)
    if weights is not None and not os.path.isfile(weights):
        raise FileNotFoundError(f"Weights file {os.fspath(weights)!r} does not exist.")
    model = build_network(model_name, **kwargs)
    if weights is not None:
        load_weights_file(model, weights)
    return model


def _is_weights_file(weights):
    return isinstance(weights, (str, os.PathLike)) and str(weights).endswith(".weights.h5")


def _from_preset(model_name, weights, midplanes=None, frames=None, **kwargs):
    """A network with pretrained weights: a preset name or alias, hf://..., or a directory."""
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "`weights` must be None, a preset name or alias (e.g. 'kinetics400'), "
            f"'hf://owner/repo[@revision]', a preset directory or a .weights.h5 file; received {weights!r}."
        )
    directory = resolve_weights(os.fspath(weights), model_name, frames=frames)
    if midplanes is not None:
        kwargs["midplanes"] = midplanes  # load_preset refuses it if it contradicts the weights
    return load_preset(directory, model_name=model_name, frames=frames, **kwargs)


def load_weights_file(model, weights):
    try:
        check_weights_file(weights, model)
        model.load_weights(weights)
    except ValueError as error:
        raise ValueError(
            f"Could not load {os.fspath(weights)!r} into {model.name!r}: the file was saved from a "
            f"different network, input channel count or class count ({error})"
        ) from error


def get_model(name, /, **overrides):
    """Builds a registered network by name.

    Args:
        name: one of `list_models()`, e.g. "r2plus1d_18".
        **overrides: any factory argument (`include_top`, `weights`, `input_tensor`,
            `input_shape`, `pooling`, `classes`, `classifier_activation`,
            `midplanes`, `frames`, `name`) or builder argument of
            `keras_r21d.VideoResNet` (`widths`, `bn_epsilon`, `bn_momentum`,
            `stem_midplanes`, `dropout`).

    Example:
    >>> model = get_model("mc3_18", classes=101, input_shape=(8, 112, 112, 3))
    >>> model.output_shape
    (None, 101)
    """
    return build_model(name, **overrides)


FACTORY_DOC = """Instantiates {display} (`{model_name}`) of Tran et al., CVPR 2018.

    {description}

    Args:
        include_top: whether to end with the global average pool and the classifier.
        weights: None (random initialisation); a preset name or alias such as
            "kinetics400" (see `keras_r21d.presets.list_presets`); "hf://owner/repo"
            or "hf://owner/repo@revision"; a local preset directory; or a
            `.weights.h5` file saved from the same network.
        input_tensor: optional Keras tensor to use as the model input.
        input_shape: `(T, H, W, C)`, channels last; `None` entries allow any size
            ({frames_note}). Defaults to `(frames, None, None, 3)`.
        pooling: without the top: None (the 5D conv5 output), "avg" (the 512-d
            clip embedding) or "max".
        classes: size of the classifier; None means the pretrained weights' own,
            or 400 (Kinetics) without them. With weights and another value, the
            pretrained classifier is replaced by a new one (fine-tuning).
        classifier_activation: activation of the classifier; None returns logits.
        midplanes: width convention of (2+1)D convs, "per_conv" (paper, Caffe2,
            ig65m; the default) or "per_block" (torchvision). Pretrained weights
            carry their own.
        frames: clip length T the model is built for (None: any).
        name: model name.
        **kwargs: `widths`, `bn_epsilon`, `bn_momentum`, `stem_midplanes`,
            `dropout` (before the classifier) of `keras_r21d.VideoResNet`.

    Returns:
        A `keras.Model`.

    Example:
    >>> model = keras_r21d.{factory}(input_shape=({example_frames}, 112, 112, 3))
    >>> model.output_shape
    (None, 400)
    """

DESCRIPTIONS = {
    "r2d": "A 2D ResNet whose first layer spans the whole clip (time collapses to 1 there).",
    "fr2d": "A 2D ResNet applied to every frame, with time pooled only at the end.",
    "r3d": "A 3D ResNet: 3x3x3 convolutions in every stage.",
    "r2plus1d": "A ResNet of (2+1)D convolutions: every 3D conv factorised into spatial + temporal.",
}


def _factory(model_name, factory_name):
    def factory(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                classes=None, classifier_activation="softmax", midplanes=None, frames=None,
                name=None, **kwargs):
        return build_model(
            model_name, include_top=include_top, weights=weights, input_tensor=input_tensor,
            input_shape=input_shape, pooling=pooling, classes=classes,
            classifier_activation=classifier_activation, midplanes=midplanes, frames=frames,
            name=name, **kwargs,
        )

    arch, _ = MODELS[model_name]
    below, above = ("3D", "2D") if arch.startswith("mc") else ("2D", "3D")
    description = DESCRIPTIONS.get(arch) or (
        f"{'Mixed' if arch.startswith('mc') else 'Reversed mixed'} convolutions: {below} "
        f"convolutions up to conv{int(arch[-1]) - 1}, {above} convolutions above."
    )
    factory.__name__ = factory.__qualname__ = factory_name
    factory.__doc__ = FACTORY_DOC.format(
        display=display_name(model_name), model_name=model_name, description=description,
        factory=factory_name, example_frames=16 if arch == "r2d" else 8,
        frames_note="R2D fixes T to `frames`, default 16" if arch == "r2d" else "any T works",
    )
    return factory


R2D18 = _factory("r2d_18", "R2D18")
FR2D18 = _factory("fr2d_18", "FR2D18")
R3D10 = _factory("r3d_10", "R3D10")
R3D16 = _factory("r3d_16", "R3D16")
R3D18 = _factory("r3d_18", "R3D18")
R3D26 = _factory("r3d_26", "R3D26")
R3D34 = _factory("r3d_34", "R3D34")
MC2_18 = _factory("mc2_18", "MC2_18")
MC3_18 = _factory("mc3_18", "MC3_18")
MC4_18 = _factory("mc4_18", "MC4_18")
MC5_18 = _factory("mc5_18", "MC5_18")
RMC2_18 = _factory("rmc2_18", "RMC2_18")
RMC3_18 = _factory("rmc3_18", "RMC3_18")
RMC4_18 = _factory("rmc4_18", "RMC4_18")
RMC5_18 = _factory("rmc5_18", "RMC5_18")
R2Plus1D10 = _factory("r2plus1d_10", "R2Plus1D10")
R2Plus1D16 = _factory("r2plus1d_16", "R2Plus1D16")
R2Plus1D18 = _factory("r2plus1d_18", "R2Plus1D18")
R2Plus1D26 = _factory("r2plus1d_26", "R2Plus1D26")
R2Plus1D34 = _factory("r2plus1d_34", "R2Plus1D34")

FACTORIES = {
    f.__name__: f for f in (
        R2D18, FR2D18, R3D10, R3D16, R3D18, R3D26, R3D34, MC2_18, MC3_18, MC4_18, MC5_18,
        RMC2_18, RMC3_18, RMC4_18, RMC5_18, R2Plus1D10, R2Plus1D16, R2Plus1D18, R2Plus1D26,
        R2Plus1D34,
    )
}
