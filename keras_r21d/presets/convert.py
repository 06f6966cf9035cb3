"""Port PyTorch and Caffe2 checkpoints of these networks onto the Keras models.

Keras weight paths map onto checkpoint keys by a name rule per layout (a table of
sub-layer names plus the block numbering), so every layer is converted the same
way. Conversion is strict: every checkpoint tensor is used, every Keras weight is
assigned, every shape checked; anything else is reported and nothing is written.

Layouts:
  - "torchvision": torchvision's VideoResNet (`stem.0`, `layer1.0.conv1.0`, `fc`),
    BN epsilon 1e-5; its r2plus1d_18 uses per-block (2+1)D widths.
  - "ig65m": the same naming with per-conv widths and BN epsilon 1e-3
    (moabitcoin/ig65m-pytorch's R(2+1)D-34).
  - "caffe2": the paper's Caffe2 release (VMZ): `conv1_w`, `comp_{c}_conv_{j}[_middle]_w`,
    `comp_{c}_spatbn_{j}[_middle]_{s,b,rm,riv}`, `shortcut_projection_{c}`,
    `last_out_L{classes}_{w,b}`; BN epsilon 1e-3, per-conv widths.
"""

import os
import pathlib
import re

import numpy as np

from keras_r21d.data.preprocessing import CROP, KINETICS_MEAN, KINETICS_STD, RESIZE
from keras_r21d.fileio import sha256_of
from keras_r21d.models import MODELS, build_network
from keras_r21d.models.backbone import ARCHITECTURES, DEPTHS
from keras_r21d.models.layers import midplanes as midplanes_formula

LAYOUTS = ("torchvision", "ig65m", "caffe2")
BN_EPSILON = {"torchvision": 1e-5, "ig65m": 1e-3, "caffe2": 1e-3}

_TORCH_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
             "moving_variance": "running_var"}
_CAFFE2_BN = {"gamma": "s", "beta": "b", "moving_mean": "rm", "moving_variance": "riv"}
# Checkpoint entries that hold no model weight (training counters, optimizer state).
_IGNORED = re.compile(r"(num_batches_tracked|_momentum|^model_iter|^lr$|^ITER$)")


class ConversionError(ValueError):
    """The checkpoint does not match the network: what is missing, unused or mis-shaped."""


def _block_index(model):
    """Caffe2 numbers blocks over the whole network: conv2_1 -> 0, conv2_2 -> 1, ..."""
    names = [layer.name for layer in model.layers if re.fullmatch(r"conv\d+_\d+", layer.name)]
    return {name: c for c, name in enumerate(names)}


def _torchvision_key(parts, stem_kind):
    top, rest = parts[0], parts[1:]
    if top == "fc":
        return "fc." + {"kernel": "weight", "bias": "bias"}[rest[0]]
    if top == "conv1":
        if stem_kind == "2plus1d":
            module = {("conv", "spatial_conv"): "0", ("conv", "spatial_bn"): "1",
                      ("conv", "temporal_conv"): "3", ("bn",): "4"}[tuple(rest[:-1])]
        else:
            module = {("conv",): "0", ("bn",): "1"}[tuple(rest[:-1])]
        prefix = f"stem.{module}"
    else:
        stage, block = (int(n) for n in top[4:].split("_"))
        sub = {"conv1": "conv1.0", "conv2": "conv2.0", "bn1": "conv1.1", "bn2": "conv2.1",
               "shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}[rest[0]]
        if len(rest) == 3:  # inside a Conv2Plus1D: a Sequential of conv, BN, ReLU, conv
            sub += "." + {"spatial_conv": "0", "spatial_bn": "1", "temporal_conv": "3"}[rest[1]]
        prefix = f"layer{stage - 1}.{block - 1}.{sub}"
    return f"{prefix}.{_TORCH_BN.get(parts[-1], 'weight')}"


def _caffe2_key(parts, block_index, classes):
    top, rest, leaf = parts[0], parts[1:-1], parts[-1]
    if top == "fc":
        return f"last_out_L{classes}_{'w' if leaf == 'kernel' else 'b'}"
    if top == "conv1":
        name = {("conv",): "conv1", ("conv", "spatial_conv"): "conv1_middle",
                ("conv", "spatial_bn"): "conv1_middle_spatbn_relu", ("conv", "temporal_conv"): "conv1",
                ("bn",): "conv1_spatbn_relu"}[tuple(rest)]
    else:
        c = block_index[top]
        j = rest[0][-1]
        name = {
            ("conv1",): f"comp_{c}_conv_1", ("conv2",): f"comp_{c}_conv_2",
            ("bn1",): f"comp_{c}_spatbn_1", ("bn2",): f"comp_{c}_spatbn_2",
            ("shortcut_conv",): f"shortcut_projection_{c}",
            ("shortcut_bn",): f"shortcut_projection_{c}_spatbn",
            (f"conv{j}", "spatial_conv"): f"comp_{c}_conv_{j}_middle",
            (f"conv{j}", "spatial_bn"): f"comp_{c}_spatbn_{j}_middle",
            (f"conv{j}", "temporal_conv"): f"comp_{c}_conv_{j}",
        }[tuple(rest)]
    return f"{name}_{_CAFFE2_BN.get(leaf, 'w')}"


def source_keys(model, layout):
    """`{keras weight path: checkpoint key}` for every weight of `model`."""
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; expected one of {LAYOUTS}.")
    stem_kind = model.get_layer("conv1").kind
    block_index = _block_index(model)
    classes = model.get_layer("fc").units if "fc" in [layer.name for layer in model.layers] else None
    keys = {}
    for weight in model.weights:
        parts = weight.path.split("/")
        keys[weight.path] = (_caffe2_key(parts, block_index, classes) if layout == "caffe2"
                             else _torchvision_key(parts, stem_kind))
    return keys


def to_keras_layout(array):
    """PyTorch/Caffe2 (out, in, kT, kH, kW) kernels and (out, in) matrices -> Keras order."""
    if array.ndim == 5:
        return array.transpose(2, 3, 4, 1, 0)
    if array.ndim == 2:
        return array.T
    return array


def assign_weights(model, tensors, layout):
    """Copies `tensors` (checkpoint key -> array) into `model`; strict.

    Raises `ConversionError` listing every Keras weight without a source, every
    checkpoint tensor left unused and every shape mismatch.
    """
    keys = source_keys(model, layout)
    missing, mismatched, values = [], [], []
    for weight in model.weights:
        key = keys[weight.path]
        if key not in tensors:
            missing.append(f"{weight.path} <- {key}")
            continue
        value = to_keras_layout(np.asarray(tensors[key]))
        if tuple(value.shape) != tuple(weight.shape):
            mismatched.append(f"{weight.path} {tuple(weight.shape)} <- {key} {np.shape(tensors[key])}")
            continue
        values.append((weight, value))
    used = set(keys.values())
    unused = sorted(k for k in tensors if k not in used and not _IGNORED.search(k))
    if missing or mismatched or unused:
        raise ConversionError(_report(model.name, layout, missing, mismatched, unused))
    for weight, value in values:
        weight.assign(value.astype(weight.dtype))


def _report(name, layout, missing, mismatched, unused, limit=12):
    lines = [f"The checkpoint does not match {name!r} in the {layout} layout:"]
    for title, items in (("Keras weights with no checkpoint tensor", missing),
                         ("shape mismatches (Keras shape <- checkpoint shape, PyTorch order)", mismatched),
                         ("checkpoint tensors not used", unused)):
        if items:
            lines.append(f"  {len(items)} {title}:")
            lines += [f"    {item}" for item in items[:limit]]
            if len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more")
    lines.append("Check --arch and --format (or pass the network this checkpoint was trained as).")
    return "\n".join(lines)


# ---------------------------------------------------------------- architecture detection

def _kernel_type(shape):
    """conv type of a (out, in, kT, kH, kW) block kernel."""
    return "3d" if shape[2] == 3 else "2d"


def _stem_kind(kernel):
    return {3: "3d", 1: "2d"}.get(kernel.shape[2], "r2d")


def _infer_torchvision(tensors):
    """Stem, stages, blocks, widths... of torchvision-named tensors."""
    two_plus_one = "stem.3.weight" in tensors
    found = {"stem": "2plus1d" if two_plus_one else _stem_kind(tensors["stem.0.weight"]),
             "stem_kernel": tensors["stem.0.weight"], "stem_midplanes": None,
             "stages": [], "blocks": [], "widths": [], "second_midplanes": None,
             "classes": tensors["fc.weight"].shape[0]}
    if two_plus_one:
        found["stem_midplanes"] = tensors["stem.0.weight"].shape[0]
    for s in range(1, 5):
        found["blocks"].append(len({k.split(".")[1] for k in tensors if k.startswith(f"layer{s}.")}))
        found["widths"].append(tensors[f"layer{s}.0.conv1.1.weight"].shape[0])
        if f"layer{s}.0.conv1.0.0.weight" in tensors:
            found["stages"].append("2plus1d")
        else:
            found["stages"].append(_kernel_type(tensors[f"layer{s}.0.conv1.0.weight"].shape))
    if "layer2.0.conv2.0.0.weight" in tensors:
        found["second_midplanes"] = tensors["layer2.0.conv2.0.0.weight"].shape[0]
    return found


def _infer_caffe2(tensors):
    """Stem, stages, blocks, widths... of Caffe2 release blobs."""
    heads = [k for k in tensors if re.fullmatch(r"last_out_L\d+_w", k)]
    if len(heads) != 1:
        raise ConversionError(f"Expected one classifier 'last_out_L<classes>_w'; found {heads or 'none'}.")
    two_plus_one = "conv1_middle_w" in tensors
    found = {"stem": "2plus1d" if two_plus_one else _stem_kind(tensors["conv1_w"]),
             "stem_kernel": tensors["conv1_w"], "stem_midplanes": None,
             "stages": [], "blocks": [], "widths": [], "second_midplanes": None,
             "classes": tensors[heads[0]].shape[0]}
    if two_plus_one:
        found["stem_midplanes"] = tensors["conv1_middle_w"].shape[0]
    num_blocks = len([k for k in tensors if re.fullmatch(r"comp_\d+_conv_1_w", k)])
    for c in range(num_blocks):
        width = tensors[f"comp_{c}_spatbn_1_s"].shape[0]
        if not found["widths"] or width != found["widths"][-1]:
            found["widths"].append(width)
            found["blocks"].append(0)
            found["stages"].append("2plus1d" if f"comp_{c}_conv_1_middle_w" in tensors
                                   else _kernel_type(tensors[f"comp_{c}_conv_1_w"].shape))
            if len(found["widths"]) == 2 and two_plus_one:
                found["second_midplanes"] = tensors[f"comp_{c}_conv_2_middle_w"].shape[0]
        found["blocks"][-1] += 1
    return found


def infer_architecture(tensors, layout):
    """Registry name and builder settings of a checkpoint, read from its tensors.

    Returns the config.json dict: `architecture`, `classes`, `midplanes`,
    `bn_epsilon`, `frames` (R2D only: its stem kernel spans the clip), `widths`
    and `stem_midplanes`.
    """
    try:
        found = _infer_caffe2(tensors) if layout == "caffe2" else _infer_torchvision(tensors)
    except KeyError as error:
        raise ConversionError(
            f"The checkpoint lacks {error.args[0]!r}, which every {layout}-layout video ResNet "
            "has; pass --format (torchvision, ig65m or caffe2) if the detected one is wrong."
        ) from None
    stem, stages, blocks = found["stem"], tuple(found["stages"]), tuple(found["blocks"])
    arch = next((name for name, (s, st) in ARCHITECTURES.items() if (s, st) == (stem, stages)), None)
    depth = next((d for d, b in DEPTHS.items() if b == blocks), None)
    if arch is None or depth is None or f"{arch}_{depth}" not in MODELS:
        raise ConversionError(
            f"No registered network has stem {stem!r}, stages {stages} and blocks {blocks}."
        )
    # Per-block widths give conv3_1's second (2+1)D conv the width of its first.
    width = found["widths"][1] if len(found["widths"]) > 1 else None
    per_block = found["second_midplanes"] is not None and (
        found["second_midplanes"] != midplanes_formula(width, width))
    config = {
        "architecture": f"{arch}_{depth}",
        "classes": int(found["classes"]),
        "midplanes": "per_block" if per_block else "per_conv",
        "bn_epsilon": BN_EPSILON[layout],
        "frames": int(found["stem_kernel"].shape[2]) if stem == "r2d" else None,
        "widths": [int(w) for w in found["widths"]],
    }
    if found["stem_midplanes"] is not None:
        config["stem_midplanes"] = int(found["stem_midplanes"])
    return config


# ---------------------------------------------------------------- end to end

def detect_layout(tensors, file_format):
    """Layout of a checkpoint: caffe2 pickles, else torchvision naming; per-conv (2+1)D
    widths in torchvision naming are ig65m's."""
    if file_format == "caffe2" or "conv1_w" in tensors:
        return "caffe2"
    if "stem.0.weight" not in tensors:
        raise ConversionError(
            "Unrecognised checkpoint: neither torchvision keys (stem.0.weight, layer1.0...) "
            "nor Caffe2 blobs (conv1_w, comp_0_conv_1_w...)."
        )
    if "stem.3.weight" not in tensors:
        return "torchvision"
    per_block = infer_architecture(tensors, "torchvision")["midplanes"] == "per_block"
    return "torchvision" if per_block else "ig65m"


def convert_checkpoint(src, output_dir, arch=None, layout=None, metadata=None):
    """Converts a checkpoint file into a preset directory; returns its path.

    Args:
        src: a `.pth`/`.pt` (zip or legacy), `.safetensors` or Caffe2 `.pkl` file.
        output_dir: the preset directory to write.
        arch: registry name to convert to (checked against the checkpoint), or
            None to infer it from the tensors.
        layout: "torchvision", "ig65m" or "caffe2"; None detects it.
        metadata: extra metadata.json entries (labels, preprocessing, frames,
            source url...); the source file name, format and sha256 are added.
    """
    from keras_r21d.presets.checkpoints import detect_format, read_checkpoint
    from keras_r21d.presets.files import save_preset

    file_format = detect_format(src)
    tensors = read_checkpoint(src, format=file_format)
    layout = layout or detect_layout(tensors, file_format)
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown format {layout!r}; expected one of {LAYOUTS}.")
    config = infer_architecture(tensors, layout)
    if arch is not None and arch != config["architecture"]:
        raise ConversionError(
            f"{os.fspath(src)!r} holds a {config['architecture']} ({layout} layout), not {arch}."
        )
    model = build_network(config.pop("architecture"), **config)
    assign_weights(model, tensors, layout)
    metadata = dict(metadata or {})
    if metadata.get("frames") is None:
        metadata["frames"] = config["frames"]
    # Every upstream checkpoint of these networks expects the Kinetics preprocessing.
    metadata.setdefault("preprocessing", {"resize": list(RESIZE), "crop": CROP,
                                          "mean": list(KINETICS_MEAN), "std": list(KINETICS_STD)})
    labels = metadata.setdefault("labels", None)
    if labels is not None and len(labels) != config["classes"]:
        raise ValueError(f"{len(labels)} class names were given for a checkpoint of {config['classes']} classes.")
    metadata["source"] = {**metadata.get("source", {}), "file": pathlib.Path(src).name,
                          "format": layout, "sha256": sha256_of(src)}
    return save_preset(model, output_dir, metadata)
