"""Sizes, costs and shapes of every network against REFERENCE sections 1 and 5
(the paper's Table 2, torchvision's published parameter counts, VMZ's GFLOPs)."""

import math

import numpy as np
import pytest
import tensorflow as tf

import keras_r21d
from keras_r21d.models import MODELS

# Trainable parameters (M, 400 classes) and GMAC per clip at 8 and 16 frames of 112x112,
# per-conv (2+1)D widths: REFERENCE section 5.
PUBLISHED = {
    "fr2d_18": (11.382, 13.80, 27.60),
    "r3d_18": (33.371, 20.35, 40.70),
    "mc2_18": (11.401, 14.27, 28.55),
    "mc3_18": (11.695, 21.67, 43.34),
    "mc4_18": (12.728, 19.98, 39.95),
    "mc5_18": (16.856, 19.95, 39.90),
    "rmc2_18": (33.353, 19.88, 39.75),
    "rmc3_18": (33.058, 12.48, 24.95),
    "rmc4_18": (32.026, 14.55, 29.09),
    "rmc5_18": (27.897, 15.39, 30.79),
    "r2plus1d_18": (33.371, 20.75, 41.50),
    "r3d_10": (14.567, 9.94, 19.89),
    "r2plus1d_10": (14.558, 10.34, 20.69),
    "r3d_16": (19.214, 19.65, 39.31),
    "r2plus1d_16": (19.208, 20.05, 40.11),
    "r3d_26": (55.494, 26.59, 53.18),
    "r2plus1d_26": (55.504, 26.99, 53.98),
    "r3d_34": (63.681, 37.69, 75.38),
    "r2plus1d_34": (63.697, 38.09, 76.18),
}
# R2D's first layer depends on the clip length: (params M, GMAC) at 8 and 16 frames.
PUBLISHED_R2D = {8: (11.448, 1.93), 16: (11.523, 2.17)}

# Exact published counts: torchvision's model cards, and ig65m's R(2+1)D-34.
EXACT = [
    ("r3d_18", "per_conv", 33_371_472),
    ("mc3_18", "per_conv", 11_695_440),
    ("r2plus1d_18", "per_block", 31_505_325),
    ("r2plus1d_34", "per_block", 61_831_661),
    ("r2plus1d_34", "per_conv", 63_697_175),
]


def test_every_registered_network_has_a_published_reference():
    assert set(PUBLISHED) | {"r2d_18"} == set(MODELS)


def graph_macs(model, frames, size=112):
    """Independent counter: multiply-accumulates of the Conv3D and MatMul ops that
    TensorFlow actually runs, read from the traced graph."""
    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec((1, frames, size, size, 3), tf.float32)).graph
    total = 0
    for op in graph.get_operations():
        if op.type == "Conv3D":
            out = op.outputs[0].shape.as_list()
            kernel = op.inputs[1].shape.as_list()  # (kT, kH, kW, in, out)
            total += math.prod(out[1:4]) * math.prod(kernel)
        elif op.type == "MatMul":
            a, b = op.inputs[0].shape.as_list(), op.inputs[1].shape.as_list()
            total += a[0] * a[1] * b[1]
        else:
            assert not op.type.startswith(("Conv", "MatMul", "BatchMatMul", "Einsum")), op.type
    return total


def _expected(name, frames):
    if name == "r2d_18":
        return PUBLISHED_R2D[frames]
    params, gmac8, gmac16 = PUBLISHED[name]
    return params, {8: gmac8, 16: gmac16}[frames]


@pytest.mark.parametrize("frames", [8, 16])
@pytest.mark.parametrize("name", list(MODELS))
def test_params_and_macs_match_published(name, frames):
    model = keras_r21d.get_model(name, input_shape=(frames, 112, 112, 3))
    params, gmac = _expected(name, frames)
    assert round(keras_r21d.count_params(model) / 1e6, 3) == pytest.approx(params, abs=1.001e-3)
    assert graph_macs(model, frames) / 1e9 == pytest.approx(gmac, rel=5e-3)
    assert keras_r21d.count_macs(model) / 1e9 == pytest.approx(gmac, rel=5e-3)


@pytest.mark.parametrize("name,convention,count", EXACT)
def test_exact_published_parameter_counts(name, convention, count):
    model = keras_r21d.get_model(name, midplanes=convention)
    assert keras_r21d.count_params(model) == count


def test_torchvision_widths_cost():
    # REFERENCE section 5: R(2+1)D-18 with torchvision widths, 20.26 / 40.52 GMAC.
    for frames, gmac in ((8, 20.26), (16, 40.52)):
        model = keras_r21d.R2Plus1D18(input_shape=(frames, 112, 112, 3), midplanes="per_block")
        assert graph_macs(model, frames) / 1e9 == pytest.approx(gmac, rel=5e-3)


def test_macs_scale_with_frames():
    # REFERENCE section 5: R(2+1)D-34 at 32 frames costs 152.4 GMAC.
    model = keras_r21d.R2Plus1D34(input_shape=(32, 112, 112, 3))
    assert keras_r21d.count_macs(model) / 1e9 == pytest.approx(152.4, rel=5e-3)


# Temporal length at the last conv for an L-frame clip: REFERENCE section 1.
LAST_T = {
    "r2d": lambda L: 1, "fr2d": lambda L: L, "r3d": lambda L: L // 8,
    "mc2": lambda L: L, "mc3": lambda L: L, "mc4": lambda L: L // 2, "mc5": lambda L: L // 4,
    "rmc2": lambda L: L // 8, "rmc3": lambda L: L // 8, "rmc4": lambda L: L // 4,
    "rmc5": lambda L: L // 2, "r2plus1d": lambda L: L // 8,
}


@pytest.mark.parametrize("frames", [8, 16, 32])
@pytest.mark.parametrize("name", list(MODELS))
def test_temporal_length_at_last_conv(name, frames):
    model = keras_r21d.get_model(name, include_top=False, input_shape=(frames, 112, 112, 3))
    arch, _ = MODELS[name]
    assert model.output_shape == (None, LAST_T[arch](frames), 7, 7, 512)


def test_stage_features_and_pooled_embedding(rng):
    model = keras_r21d.R3D18(include_top=False, pooling="avg", input_shape=(8, 32, 32, 3))
    assert model.output_shape == (None, 512)
    features = keras_r21d.stage_feature_model(model)
    x = rng.normal(size=(1, 8, 32, 32, 3)).astype("float32")
    maps = {k: np.asarray(v) for k, v in features(x).items()}
    assert {k: v.shape for k, v in maps.items()} == {
        "conv1": (1, 8, 16, 16, 64), "conv2": (1, 8, 16, 16, 64), "conv3": (1, 4, 8, 8, 128),
        "conv4": (1, 2, 4, 4, 256), "conv5": (1, 1, 2, 2, 512),
    }
    # The pooled embedding is the mean of the conv5 map over T, H and W.
    np.testing.assert_allclose(np.asarray(model(x)), maps["conv5"].mean(axis=(1, 2, 3)), atol=1e-5)
