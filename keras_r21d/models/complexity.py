"""Size and cost of a built network: trainable parameters and multiply-accumulates.

Parameters are counted as torchvision counts them (conv kernels, BN gamma and
beta, classifier; BN moving statistics excluded). MACs count convolutions and
the classifier per clip, as the "GFLOPs" of torchvision and VMZ do (a FLOP is two
MACs); BN, ReLU, additions and pooling are ignored.
"""

import math

from keras import layers

from keras_r21d.models.layers import trace_shapes


def count_params(model):
    """Trainable parameters of `model`."""
    return sum(math.prod(w.shape) for w in model.trainable_weights)


def _layer_macs(layer, input_shape, output_shape):
    if isinstance(layer, layers.Dense):
        return math.prod(input_shape[1:]) * layer.units
    if hasattr(layer, "kernel_size") and hasattr(layer, "filters"):
        per_position = math.prod(layer.kernel_size) * input_shape[-1] // layer.groups * layer.filters
        return math.prod(output_shape[1:-1]) * per_position
    return 0


def count_macs(model):
    """Multiply-accumulates for one clip through `model`.

    The model must have a fully known input shape, e.g. one built with
    `input_shape=(16, 112, 112, 3)`.
    """
    if any(d is None for d in model.input_shape[1:]):
        raise ValueError(
            f"count_macs needs a fixed input size; {model.name!r} takes {model.input_shape}. "
            "Build it with input_shape=(T, H, W, 3), e.g. (16, 112, 112, 3)."
        )
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        input_shape = (1,) + tuple(layer.input.shape[1:])
        for leaf, leaf_in, leaf_out in trace_shapes(layer, input_shape):
            total += _layer_macs(leaf, leaf_in, leaf_out)
    return total
