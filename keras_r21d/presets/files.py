"""Preset directories: `config.json` + `model.weights.h5` + `metadata.json`.

`config.json` holds the arguments that rebuild the network (the registry name and
builder settings), `model.weights.h5` its weights, `metadata.json` what a user of
the weights needs: class names, preprocessing, clip length, source and checksum.
The same files are a keras-hub backbone preset (`HUB_BACKBONE`, `keras_r21d.hub`).
"""

import json
import logging
import math
import os
import pathlib
import shutil
import tempfile
import warnings

from keras_r21d.fileio import write_json
from keras_r21d.models import ARCHITECTURES, MODELS, VideoResNet, build_network, registered_name
from keras_r21d.models.layers import CONV_TYPES, STEM_TYPES

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)
MODEL_CARD = "README.md"

# Settings that change the weights' shapes or values, stored in config.json: the registry
# name, or for a network outside the registry its table (stem, stages, blocks).
CONFIG_KEYS = ("architecture", "stem", "stages", "blocks", "classes", "midplanes", "frames", "bn_epsilon",
               "bn_momentum", "widths", "stem_midplanes")
TABLE_KEYS = ("stem", "stages", "blocks")
# config.json is also keras-hub's config of the backbone (a serialized keras_r21d.hub.R21DBackbone:
# these keys, and the settings above less `classes` under "config"), so that
# keras_hub.models.Backbone.from_preset reads our presets; `classes` sits beside it, for the head.
HUB_BACKBONE = {"module": "keras_r21d.hub", "class_name": "R21DBackbone",
                "registered_name": "keras_r21d>R21DBackbone"}

_dropped_head_warned = set()


def model_config(model):
    """The config.json dict of a keras_r21d network (with its classifier), from its Keras config."""
    if not isinstance(model, VideoResNet):
        raise TypeError(
            f"Model {model.name!r} is a {type(model).__name__}, not a keras_r21d network (VideoResNet), so a "
            "preset cannot rebuild it; build it with keras_r21d.get_model(...) or a factory, or save it "
            "with model.save('model.keras')."
        )
    config = model.get_config()
    if not config["include_top"]:
        raise ValueError("A preset stores a whole classifier; build the model with include_top=True.")
    architecture = registered_name(config)
    keys = [key for key in CONFIG_KEYS if key != "architecture" and (architecture is None or key not in TABLE_KEYS)]
    return {"architecture": architecture, **{key: config[key] for key in keys}}


def save_preset(model, directory, metadata=None):
    """Saves `model` as a preset directory; returns its path.

    Args:
        model: a network built by `keras_r21d.get_model` or a factory.
        directory: where to write config.json, model.weights.h5, metadata.json.
        metadata: dict stored as metadata.json (e.g. `labels`, `preprocessing`,
            `frames`, `source`); None stores the model's own `metadata`.

    An existing preset at `directory` is replaced whole (its README.md kept); a directory
    holding other files is refused.
    """
    directory = pathlib.Path(directory)
    config = model_config(model)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{os.fspath(directory)!r} is a file, not a preset directory.")
    leftover = sorted(p.name for p in directory.iterdir() if p.name not in (*PRESET_FILES, MODEL_CARD)) \
        if directory.is_dir() else []
    if leftover:
        raise FileExistsError(
            f"{os.fspath(directory)!r} holds other files than a preset's ({leftover[:5]}); "
            "save the preset to a new or empty directory.")
    directory.parent.mkdir(parents=True, exist_ok=True)
    # The whole preset is written to a sibling folder, then swapped in: an interrupted save
    # leaves the previous preset (or nothing), never new files beside old ones.
    old = None
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache's presets from other users
    try:
        model.save_weights(staging / WEIGHTS_FILE)
        write_json(staging / CONFIG_FILE, {**HUB_BACKBONE, "config": {k: v for k, v in config.items() if k != "classes"},
                                           "classes": config["classes"]})
        write_json(staging / METADATA_FILE, model.metadata if metadata is None else metadata)
        if (directory / MODEL_CARD).is_file():  # a card written by hand stays with the preset
            shutil.copy2(directory / MODEL_CARD, staging / MODEL_CARD)
        if directory.exists():
            old = directory.parent / f"{staging.name[:-len('.partial')]}.old"
            os.replace(directory, old)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and old.exists() and not directory.exists():
            os.replace(old, directory)  # the swap failed half-way: the previous preset goes back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def is_preset_dir(path):
    path = pathlib.Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# config.json's keys: (check, what it must be). A preset is a file from a stranger: every
# key is checked before it reaches get_model, and no other key is accepted.
_CONFIG_SCHEMA = {
    "architecture": (lambda v: v is None or (isinstance(v, str) and v in MODELS),
                     "a registered network name, or null with stem, stages and blocks"),
    "stem": (lambda v: v in STEM_TYPES, f"one of {STEM_TYPES}"),
    "stages": (lambda v: isinstance(v, list) and 1 <= len(v) <= 8 and all(c in CONV_TYPES for c in v),
               f"a list of 1 to 8 of {CONV_TYPES}"),
    "blocks": (lambda v: isinstance(v, list) and 1 <= len(v) <= 8 and all(_positive_int(b) and b <= 64 for b in v),
               "a list of 1 to 8 integers in [1, 64]"),
    "classes": (_positive_int, "an integer >= 1"),
    "midplanes": (lambda v: v in ("per_conv", "per_block"), "'per_conv' or 'per_block'"),
    "frames": (lambda v: v is None or _positive_int(v), "an integer >= 1 or null"),
    "bn_epsilon": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    "bn_momentum": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "widths": (lambda v: isinstance(v, list) and 1 <= len(v) <= 8 and all(map(_positive_int, v)),
               "a list of integers >= 1, one per stage"),
    "stem_midplanes": (_positive_int, "an integer >= 1"),
}
assert set(_CONFIG_SCHEMA) == set(CONFIG_KEYS)


def _read_json(path):
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{os.fspath(path)!r} is not valid JSON: {error}.") from None


def read_config(directory):
    """config.json of a preset, checked key by key (errors name the file)."""
    path = pathlib.Path(directory) / CONFIG_FILE
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ValueError(  # noqa: TRY004 - the file's content is wrong, not the caller's argument
            f"{os.fspath(path)!r} must hold a JSON object; it holds a {type(config).__name__}.")
    if "registered_name" in config:  # keras-hub's layout; presets written before it are flat
        config = _flat_config(config, path)
    unknown = sorted(set(config) - set(_CONFIG_SCHEMA))
    required = ("architecture", "classes") + (TABLE_KEYS if config.get("architecture", "") is None else ())
    missing = [key for key in required if key not in config]
    if unknown or missing:
        raise ValueError(f"{os.fspath(path)!r}: " + "; ".join(
            ([f"unknown keys {unknown} (allowed: {list(_CONFIG_SCHEMA)})"] if unknown else [])
            + ([f"missing keys {missing}"] if missing else [])) + ".")
    table = [key for key in TABLE_KEYS if key in config]
    if config["architecture"] is not None and table:
        raise ValueError(f"{os.fspath(path)!r}: a registered architecture comes with its own table; "
                         f"remove {table} or set architecture to null.")
    for key, value in config.items():
        check, expected = _CONFIG_SCHEMA[key]
        if not check(value):
            raise ValueError(f"{os.fspath(path)!r}: {key} must be {expected}; it is {value!r}.")
    # One block count and one width per stage.
    stages = config["stages"] if config["architecture"] is None else ARCHITECTURES[MODELS[config["architecture"]][0]][1]
    for key in ("blocks", "widths"):
        if key in config and len(config[key]) != len(stages):
            raise ValueError(f"{os.fspath(path)!r}: {key} must be a list of {len(stages)} integers >= 1, one per "
                             f"stage; it is {config[key]!r}.")
    return config


def _flat_config(data, path):
    """The settings of a config.json in keras-hub's layout (see HUB_BACKBONE), as one dict."""
    wrong = {key: data.get(key) for key, value in HUB_BACKBONE.items() if data.get(key) != value}
    if wrong:
        raise ValueError(f"{os.fspath(path)!r} is not the config of a keras_r21d backbone: {wrong} (expected "
                         f"{HUB_BACKBONE}).")
    if "classes" not in data:
        raise ValueError(f"{os.fspath(path)!r}: missing keys ['classes'] beside the backbone's config. A keras-hub "
                         "preset saved by save_to_preset keeps its classifier in task.json instead: load it with "
                         "keras_r21d.hub.R21DVideoClassifier.from_preset(...).")
    unknown = sorted(set(data) - {*HUB_BACKBONE, "config", "classes"})
    if unknown or not isinstance(data.get("config"), dict):
        raise ValueError(f"{os.fspath(path)!r}: expected the keys {[*HUB_BACKBONE, 'config', 'classes']} with "
                         f"`config` an object; found {sorted(data)}.")
    # keras-hub's serializer adds the name, trainable flag and dtype, which leave the weights as they are.
    settings = {key: value for key, value in data["config"].items() if key not in ("name", "trainable", "dtype")}
    return {**settings, "classes": data["classes"]}


def read_metadata(directory):
    path = pathlib.Path(directory) / METADATA_FILE
    if not path.is_file():
        return {}
    metadata = _read_json(path)
    if not isinstance(metadata, dict):
        raise ValueError(  # noqa: TRY004 - the file's content is wrong, not the caller's argument
            f"{os.fspath(path)!r} must hold a JSON object; it holds a {type(metadata).__name__}.")
    return metadata


def check_weights_file(path, model, classes=None):
    """Refuses a `.weights.h5` that does not hold `model`'s weights (with a classifier of
    `classes` classes; None: `model`'s own), before Keras reads it.

    Keras reads each dataset whole, and an HDF5 file of a few kB can declare gigabytes
    (that read as zeros), so only the file's declarations are read here: their size
    (at most 4x the network's, for an optimizer's state saved with it), the shapes of the
    network's arrays and whether their data is there.
    """
    import h5py
    import numpy as np

    has_fc = any(layer.name == "fc" for layer in model.layers)
    shapes = [tuple(v.shape) for v in model.weights if not (has_fc and v.path.startswith("fc/"))]
    if classes is not None or has_fc:
        features = model.get_layer("fc").kernel.shape[0] if has_fc else model.output_shape[-1]
        classes = classes or model.get_layer("fc").kernel.shape[1]
        shapes += [(features, classes), (classes,)]
    expected = sum(math.prod(shape) for shape in shapes) * np.dtype(model.weights[0].dtype).itemsize
    datasets = []
    try:
        with h5py.File(path, "r") as f:
            # visititems walks each object once, whatever links point back to it.
            f.visititems(lambda name, item: datasets.append(
                (name, item.shape, item.nbytes, item.id.get_storage_size(), bool(item.compression)))
                if isinstance(item, h5py.Dataset) else None)
    except OSError as error:
        raise ValueError(f"{os.fspath(path)!r} is not a readable HDF5 weights file ({error}); "
                         "write it again with keras_r21d.save_preset.") from error
    where, name = os.fspath(path), model.name
    declared = sum(nbytes for _, _, nbytes, _, _ in datasets)
    # A file saved from a compiled model also holds the optimizer's state (Adam: two
    # slots per weight), under "optimizer/": allowed, within the bound.
    if declared > 4 * expected + (1 << 20):
        raise ValueError(f"{where!r} declares {declared / 2**20:.1f} MiB of weights; {name} has "
                         f"{expected / 2**20:.1f} MiB (4x that with an optimizer's state). The file is not "
                         "this network's.")
    found = sorted(tuple(shape) for key, shape, _, _, _ in datasets if key.startswith("layers/"))
    if found != sorted(shapes):
        extra = sorted(set(found) - set(shapes)) or sorted(set(shapes) - set(found)) or "other counts"
        raise ValueError(f"{where!r} holds {len(found)} arrays, {name} with {classes} classes has "
                         f"{len(shapes)} of other shapes ({extra[:3] if isinstance(extra, list) else extra}): "
                         "it was saved from another network, class count or input channel count.")
    empty = [name for name, _, nbytes, stored, compressed in datasets if stored < nbytes and not compressed]
    if empty:
        raise ValueError(f"{where!r} declares weights it does not hold ({empty[0]}"
                         f"{f' and {len(empty) - 1} more' if len(empty) > 1 else ''}): the "
                         "file is damaged or was not written by Keras.")


def load_preset(directory, model_name=None, include_top=True, classes=None, **kwargs):
    """Builds the network of a preset directory and loads its weights.

    Args:
        directory: a preset directory.
        model_name: the registry name the caller expects (checked), or None.
        include_top: keep the classifier. With `classes` different from the
            preset's, the pretrained classifier is dropped and a new one built
            (fine-tuning); this is said once per preset.
        classes: classifier size; None keeps the preset's.
        **kwargs: other factory arguments (`input_shape`, `input_tensor`,
            `pooling`, `classifier_activation`, `name`, ...).

    Returns:
        A `VideoResNet` whose `metadata` is the metadata.json dict (less the class
        names when the classifier is dropped).
    """
    directory = pathlib.Path(directory)
    if not is_preset_dir(directory):
        raise FileNotFoundError(
            f"{os.fspath(directory)!r} is not a preset directory: it needs {CONFIG_FILE} and "
            f"{WEIGHTS_FILE} (write one with keras_r21d.save_preset or `keras-r21d convert`)."
        )
    config = read_config(directory)
    arch = config.pop("architecture")
    if model_name is not None and arch is None:
        raise ValueError(
            f"The weights in {os.fspath(directory)!r} are for a network outside the registry (stem "
            f"{config['stem']!r}, stages {config['stages']}), not {model_name!r}; load them with "
            f"keras_r21d.load_preset({os.fspath(directory)!r})."
        )
    if model_name is not None and arch != model_name:
        raise ValueError(
            f"The weights in {os.fspath(directory)!r} are for {arch!r}, not {model_name!r}; "
            f"use keras_r21d.get_model({arch!r}, weights=...) instead."
        )
    preset_classes = config.pop("classes")
    trained_frames = config.pop("frames", None)
    asked_frames = kwargs.pop("frames", None)
    # Only R2D's weights fix the clip length; the others take any T.
    stem = config["stem"] if arch is None else ARCHITECTURES[MODELS[arch][0]][0]
    if stem == "r2d":
        if asked_frames not in (None, trained_frames):
            raise ValueError(f"These R2D weights span {trained_frames} frames; received frames={asked_frames}.")
        asked_frames = trained_frames
    clashes = {key: kwargs.pop(key) for key in list(kwargs) if key in config}
    clashes = {key: value for key, value in clashes.items()
               if (list(value) if isinstance(value, (list, tuple)) else value) != config[key]}
    if clashes:
        raise ValueError(
            f"The weights in {os.fspath(directory)!r} fix "
            + ", ".join(f"{key}={config[key]!r}" for key in clashes) + "; received "
            + ", ".join(f"{key}={value!r}" for key, value in clashes.items()) + ". Leave them out."
        )
    metadata = read_metadata(directory)
    new_head = include_top and classes not in (None, preset_classes)
    if new_head or not include_top:
        metadata.pop("labels", None)  # they name the preset's classes, not these
    metadata.update(kwargs.pop("metadata", None) or {})  # the caller's entries win (labels of a new head too)
    settings = dict(include_top=include_top, frames=asked_frames, classes=classes or preset_classes,
                    metadata=metadata, **config, **kwargs)
    model = build_network(arch, **settings) if arch is not None else VideoResNet(**settings)
    weights = directory / WEIGHTS_FILE
    check_weights_file(weights, model, preset_classes)
    if include_top and not new_head:
        model.load_weights(weights)
    else:
        if include_top and os.fspath(directory) not in _dropped_head_warned:
            _dropped_head_warned.add(os.fspath(directory))
            logging.getLogger("keras_r21d").warning(
                "The preset %s has %d classes and %d were asked for: its classifier is dropped and a "
                "new one initialised for fine-tuning.", os.fspath(directory), preset_classes, classes)
        # Everything but the classifier: check_weights_file made sure the file holds this
        # network's arrays and one classifier, so the classifier is all that is skipped.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_weights(weights, skip_mismatch=True)
    return model
