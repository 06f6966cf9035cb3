"""optimize_for_inference: the same function as the trained network, faster.

The reference is the network's own inference (`model(x, training=False)`), which the
parity tests check against PyTorch and NumPy; BN folding is also checked against a
NumPy conv + BN. The accuracy rule of the fast modes runs on real videos with
torchvision weights converted by our converter.
"""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_r21d
from keras_r21d.machine import cpu_kind
from keras_r21d.models.optimize import FusedConv, fold_batchnorm
from tests.conftest import SHARED_DATA, randomize_batchnorm
from tests.numpy_reference import batchnorm, conv3d

NETWORKS = ["r2plus1d_18", "r3d_18", "mc3_18", "fr2d_18", "rmc3_18", "r2d_18"]


def network(name, frames=8, size=32, **kwargs):
    model = keras_r21d.get_model(name, input_shape=(frames, size, size, 3), frames=frames,
                                 classifier_activation=None, classes=7, **kwargs)
    randomize_batchnorm(model)
    return model


def op_types(model, shape):
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec(shape, tf.float32))
    types = {op.type for op in concrete.graph.get_operations()}
    for function in concrete.graph._functions.values():
        types |= {node.op for node in function.definition.node_def}
    return types


def test_folded_batchnorm_equals_numpy_conv_then_bn(rng):
    conv = keras_r21d.ZeroPaddedConv3D(5, (3, 3, 3), strides=(1, 2, 2), zero_padding=1, use_bias=False)
    bn = keras.layers.BatchNormalization(epsilon=1e-5)
    x = rng.normal(size=(2, 4, 9, 9, 3)).astype("float32")
    bn(conv(x))
    for weight in (bn.gamma, bn.beta, bn.moving_mean):
        weight.assign(rng.normal(size=5).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 5).astype("float32"))
    kernel, bias = fold_batchnorm(conv, bn)
    expected = batchnorm(conv3d(x, conv.get_weights()[0], (1, 2, 2), (1, 1, 1)), *bn.get_weights(), 1e-5)
    got = conv3d(x, kernel, (1, 2, 2), (1, 1, 1)) + bias
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("conv2d_only", [False, True])
def test_same_outputs_as_the_network(name, conv2d_only, rng):
    model = network(name, midplanes="per_block" if name.startswith("r2plus1d") else None)
    fast = keras_r21d.optimize_for_inference(model, conv2d_only=conv2d_only)
    x = rng.normal(size=(2, 8, 32, 32, 3)).astype("float32")
    expected = np.asarray(model(x, training=False))
    got = np.asarray(fast.predict_on_batch(x))
    assert got.shape == expected.shape == (2, 7)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in fast._flatten_layers())
    if name.startswith("r2plus1d"):  # (2+1)D widths of 230, 460, 921 run padded to multiples of 16
        assert model.get_layer("conv3_1").conv1.resolved_midplanes == 230
        assert fast.get_layer("conv3_1_conv1_spatial").filters == 240


def test_conv2d_only_graph_of_r2plus1d_has_no_3d_convolution():
    model = network("r2plus1d_18")
    assert "Conv3D" in op_types(keras_r21d.optimize_for_inference(model), (1, 8, 32, 32, 3))
    types = op_types(keras_r21d.optimize_for_inference(model, conv2d_only=True), (1, 8, 32, 32, 3))
    assert "Conv3D" not in types and "Conv2D" in types
    assert "FusedBatchNormV3" not in types


def test_dynamic_shapes_headless_and_saving(rng, tmp_path):
    model = keras_r21d.get_model("r2plus1d_18", include_top=False, midplanes="per_block")
    randomize_batchnorm(model)
    fast = keras_r21d.optimize_for_inference(model, conv2d_only=True)
    for shape in [(1, 4, 32, 32, 3), (3, 6, 24, 40, 3)]:
        x = rng.normal(size=shape).astype("float32")
        expected = np.asarray(model(x, training=False))
        np.testing.assert_allclose(fast(x), expected, atol=1e-4 * np.abs(expected).max())
    path = tmp_path / "fast.keras"
    fast.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded.get_layer("conv2_1_conv1_spatial"), FusedConv)
    np.testing.assert_allclose(reloaded(x), fast(x), atol=1e-6)


def test_bfloat16_precision_runs_convolutions_in_bfloat16(rng):
    model = network("r2plus1d_18", frames=4)
    fast = keras_r21d.optimize_for_inference(model, precision="bfloat16")
    assert fast.get_layer("conv2_1_conv1_spatial").compute_dtype == "bfloat16"
    x = rng.normal(size=(2, 4, 32, 32, 3)).astype("float32")
    got = fast.predict_on_batch(x)
    assert got.dtype == np.float32
    expected = np.asarray(model(x, training=False))
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    assert not np.allclose(got, expected, rtol=1e-6, atol=1e-6)  # really bf16, not fp32


def test_bad_input_is_refused():
    model = network("r3d_18", frames=4)
    with pytest.raises(ValueError, match="precision 'int4'"):
        keras_r21d.optimize_for_inference(model, precision="int4")
    inputs = keras.Input((4, 32, 32, 3))
    branch = keras.Model(inputs, keras.layers.Add()([model(inputs), model(inputs)]))
    with pytest.raises(TypeError, match="takes a network built by keras_r21d.*received Functional"):
        keras_r21d.optimize_for_inference(branch)


VIDEOS = SHARED_DATA / "videos"


@pytest.fixture(scope="module")
def converted_r2plus1d(tmp_path_factory):
    """torchvision's randomly initialised R(2+1)D-18, through our converter."""
    directory = tmp_path_factory.mktemp("torchvision")
    script = pathlib.Path(__file__).with_name("torch_reference.py")
    run = subprocess.run([sys.executable, str(script), str(directory), "torchvision:r2plus1d_18"],
                         check=False, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert run.returncode == 0, run.stderr[-3000:]
    checkpoint = next(p for p in directory.iterdir() if p.suffix in (".pth", ".pt"))
    return keras_r21d.convert_checkpoint(checkpoint, tmp_path_factory.mktemp("preset"))


@pytest.mark.skipif(not VIDEOS.is_dir(), reason=f"real videos not found at {VIDEOS}")
def test_fast_modes_keep_top1_and_probabilities_on_real_clips(converted_r2plus1d):
    from keras_r21d.data.preprocessing import preprocess_input
    from keras_r21d.data.video import read_clip

    files = sorted(p for p in VIDEOS.iterdir() if p.suffix in (".mp4", ".avi"))
    # Kinetics preprocessing (128x171 resize, 112 centre crop) of each video's first clip.
    x = np.concatenate([preprocess_input(read_clip(str(p), 0, 16)[None]) for p in files])
    model = keras_r21d.load_preset(converted_r2plus1d)
    reference = model.predict(x, batch_size=4, verbose=0)
    assert reference.max(1).min() > 4 / reference.shape[1]  # confident enough for top-1 to mean something
    # Without the CPU's bfloat16 instructions bfloat16 is emulated, about 18 s a clip here on AMD Zen 3
    # (float32: 1 s): there its bound is checked on one clip, elsewhere on all of them.
    bfloat16_clips = len(x) if cpu_kind()["bfloat16"] else 1
    for precision, n in (("float32", len(x)), ("bfloat16", bfloat16_clips)):
        fast = keras_r21d.optimize_for_inference(model, precision=precision)
        probs = fast.predict(x[:n], batch_size=4, verbose=0)
        assert np.abs(probs - reference[:n]).max() < 0.01, precision
        # float32 keeps every top-1. bfloat16 keeps 8 bits of mantissa: with random weights a clip's two
        # best classes can be nearly tied (seen: one of 10 swapped on AMD Zen 3), so only the bound above holds.
        if precision == "float32":
            np.testing.assert_array_equal(probs.argmax(1), reference.argmax(1))


def test_predict_and_evaluate_get_the_fast_graph_without_asking():
    from keras_r21d.models.optimize import inference_model

    model = network("mc3_18", frames=4)
    fast = inference_model(model)
    assert any(isinstance(layer, FusedConv) for layer in fast.layers)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in fast._flatten_layers())
    assert inference_model(fast) is fast  # already an inference graph: not rebuilt (evaluate nests the calls)
    inputs = keras.Input((4, 32, 32, 3))
    wrapped = keras.Model(inputs, keras.layers.Add()([model(inputs), model(inputs)]))
    assert inference_model(wrapped) is wrapped  # not a keras_r21d chain: run as it is
