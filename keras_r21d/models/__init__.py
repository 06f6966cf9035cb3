"""The networks of Tran et al. (CVPR 2018) as Keras models: layers, the ResNet backbone,
the registry of named networks, complexity counts and inference-graph folding.

No files and no weights here: pretrained weights live in `keras_r21d.presets`, and the
`keras.applications`-style factories that join the two in `keras_r21d.applications`.
"""

import keras

from keras_r21d.models.backbone import ARCHITECTURES, DEPTHS, VideoResNet

# Every registered network: name -> (architecture, depth). The paper's 12 networks
# at 18 layers, and R3D / R(2+1)D at the other depths it studies.
MODELS = {f"{arch}_18": (arch, 18) for arch in ARCHITECTURES}
MODELS.update({f"{arch}_{depth}": (arch, depth) for arch in ("r3d", "r2plus1d") for depth in (10, 16, 26, 34)})
MODELS = dict(sorted(MODELS.items(), key=lambda item: (list(ARCHITECTURES).index(item[1][0]), item[1][1])))

# Paper names, for tables and messages.
DISPLAY_NAMES = {
    "r2d": "R2D", "fr2d": "f-R2D", "r3d": "R3D", "mc2": "MC2", "mc3": "MC3", "mc4": "MC4",
    "mc5": "MC5", "rmc2": "rMC2", "rmc3": "rMC3", "rmc4": "rMC4", "rmc5": "rMC5",
    "r2plus1d": "R(2+1)D",
}


def display_name(name):
    arch, depth = MODELS[name]
    return f"{DISPLAY_NAMES[arch]}-{depth}"


def check_name(name):
    if name not in MODELS:
        close = [n for n in MODELS if n.split("_")[0] == str(name).split("_")[0]] or list(MODELS)
        raise ValueError(f"Unknown network {name!r}. Registered networks: {', '.join(close)}.")


DEFAULT_CLASSES = 400  # Kinetics-400
DEFAULT_MIDPLANES = "per_conv"  # the paper's


def build_network(
    model_name,
    include_top=True,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=None,
    classifier_activation="softmax",
    midplanes=None,
    frames=None,
    name=None,
    **kwargs,
):
    """Builds the registered network `model_name`, randomly initialised; see
    `keras_r21d.get_model` for the arguments."""
    check_name(model_name)
    classes = DEFAULT_CLASSES if classes is None else classes
    midplanes = midplanes or DEFAULT_MIDPLANES
    arch, depth = MODELS[model_name]
    stem, stages = ARCHITECTURES[arch]
    return VideoResNet(
        stem=stem, stages=stages, blocks=DEPTHS[depth], midplanes=midplanes, frames=frames,
        include_top=include_top, input_tensor=input_tensor, input_shape=input_shape,
        pooling=pooling, classes=classes, classifier_activation=classifier_activation,
        name=name or model_name, **kwargs,
    )


def registered_name(config):
    """The registry name of a network with this Keras config (stem, stage conv types and
    blocks), e.g. "r2plus1d_18"; None for a network outside the registry."""
    for name, (arch, depth) in MODELS.items():
        stem, stages = ARCHITECTURES[arch]
        if (config.get("stem"), list(config.get("stages", ())), list(config.get("blocks", ()))) == (
                stem, list(stages), list(DEPTHS[depth])):
            return name
    return None


def metadata_of(model):
    """The metadata stored with the weights of `model` (a VideoResNet or its inference
    graph): class names, preprocessing, clip length; {} for any other model."""
    return dict(getattr(model, "metadata", None) or {}) if isinstance(model, keras.Model) else {}
