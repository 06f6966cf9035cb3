"""Every registered network: builds, runs, trains, saves, and agrees across backends."""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import randomize_batchnorm

import keras_r21d
from keras_r21d.applications import FACTORIES
from keras_r21d.models import MODELS, registered_name

TINY = (8, 32, 32, 3)
ALL = list(MODELS)


def tiny_model(name, **kwargs):
    keras.utils.set_random_seed(0)
    model = keras_r21d.get_model(name, input_shape=TINY, **kwargs)
    randomize_batchnorm(model)
    return model


def tiny_clip(batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, *TINY)).astype("float32")


def test_registry_names():
    paper = ["r2d_18", "fr2d_18", "r3d_18", "mc2_18", "mc3_18", "mc4_18", "mc5_18",
             "rmc2_18", "rmc3_18", "rmc4_18", "rmc5_18", "r2plus1d_18"]
    deeper = [f"{a}_{d}" for a in ("r3d", "r2plus1d") for d in (10, 16, 26, 34)]
    assert sorted(keras_r21d.list_models()) == sorted(paper + deeper)
    assert keras_r21d.list_models("rmc*") == ["rmc2_18", "rmc3_18", "rmc4_18", "rmc5_18"]
    assert keras_r21d.list_models("*_34") == ["r3d_34", "r2plus1d_34"]
    assert keras_r21d.list_models("nothing*") == []


def test_factories_cover_the_registry_and_follow_keras_applications():
    import inspect

    assert len(FACTORIES) == len(MODELS)
    built = {f(input_shape=TINY, include_top=False).name for f in FACTORIES.values()}
    assert built == set(MODELS)
    params = list(inspect.signature(keras_r21d.R2Plus1D18).parameters)
    assert params[:7] == ["include_top", "weights", "input_tensor", "input_shape", "pooling",
                          "classes", "classifier_activation"]
    assert "midplanes" in params and "name" in params
    assert "R(2+1)D-18" in keras_r21d.R2Plus1D18.__doc__


@pytest.mark.parametrize("name", ALL)
def test_forward_and_gradient_on_every_weight(name):
    model = tiny_model(name, classes=7)
    x = tiny_clip()
    probs = np.asarray(model(x, training=False))
    assert probs.shape == (2, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    labels = tf.constant([1, 4])
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(labels, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    for weight, grad in zip(model.trainable_weights, grads):
        assert grad is not None, weight.path
        grad = np.asarray(grad)
        assert np.all(np.isfinite(grad)) and np.any(grad != 0), weight.path


@pytest.mark.parametrize("name", ALL)
def test_keras_file_round_trip(tmp_path, name):
    model = tiny_model(name)
    x = tiny_clip()
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    # The network's settings are its Keras config, and name it in the registry.
    assert type(loaded) is keras_r21d.VideoResNet and loaded.get_config() == model.get_config()
    assert registered_name(loaded.get_config()) == name


def test_weights_file_loads_through_the_factory(tmp_path):
    model = tiny_model("mc3_18", classes=5)
    path = tmp_path / "mc3.weights.h5"
    model.save_weights(path)
    again = keras_r21d.MC3_18(input_shape=TINY, classes=5, weights=str(path))
    x = tiny_clip()
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(model(x)))


def test_any_frame_count_and_size():
    model = keras_r21d.R2Plus1D18(include_top=False, pooling="avg")
    assert model.input_shape == (None, None, None, None, 3)
    for shape in [(4, 24, 40, 3), (12, 32, 32, 3)]:
        assert model(np.zeros((1, *shape), "float32")).shape == (1, 512)


# Every kind of layer and stage transition once: the R2D stem (time folded into channels),
# 2D, 3D and (2+1)D stems and stages, 2D->3D and 3D->2D stage changes, 10 and 18 layers.
# The default suite runs these on JAX and PyTorch; all 20 networks run with `-m slow`.
EVERY_LAYER_KIND = ["r2d_18", "fr2d_18", "r3d_10", "mc3_18", "rmc3_18", "r2plus1d_10"]


def compare_backends(directory, names, backend):
    """Every network of `names` with random weights saved to disk, run on TensorFlow here and
    on `backend` in a subprocess: the logits agree."""
    x = tiny_clip(batch=1)
    np.save(directory / "input.npy", x)
    expected = {}
    for name in names:
        model = tiny_model(name, classifier_activation=None)
        model.save_weights(directory / f"{name}.weights.h5")
        expected[name] = np.asarray(model(x, training=False))
    worker = pathlib.Path(__file__).with_name("backend_worker.py")
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    run = subprocess.run([sys.executable, str(worker), str(directory), *names], env=env,
                         capture_output=True, text=True, timeout=1200, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in names:
        got = np.load(directory / f"{name}.{backend}.npy")
        scale = max(1.0, np.abs(expected[name]).max())
        np.testing.assert_allclose(got, expected[name], atol=1e-5 * scale, rtol=0, err_msg=name)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_same_output_on_every_backend(tmp_path, backend):
    compare_backends(tmp_path, EVERY_LAYER_KIND, backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_every_network_gives_the_same_output_on_every_backend(tmp_path, backend):
    compare_backends(tmp_path, ALL, backend)
