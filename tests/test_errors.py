"""Bad arguments fail early with messages that say what was received and what is expected."""

import keras
import numpy as np
import pytest

import keras_r21d
from keras_r21d import BasicBlock, Conv2Plus1D, Stem, VideoResNet


@pytest.mark.parametrize("call,pattern", [
    (lambda: keras_r21d.get_model("r4d_18"), r"Unknown network 'r4d_18'.*r3d_18"),
    (lambda: keras_r21d.get_model("mc6_18"), r"Unknown network 'mc6_18'.*mc2_18"),
    (lambda: keras_r21d.R3D18(input_shape=(16, 112, 112)), r"\(frames, height, width, channels\).*\(16, 112, 112\)"),
    (lambda: keras_r21d.R3D18(input_shape=(16, 112, 112, 0)), r"channels must be a positive int.*received 0"),
    (lambda: keras_r21d.R3D18(input_shape=(16, -112, 112, 3)), r"height must be a positive int.*received -112"),
    (lambda: keras_r21d.R3D18(input_shape=(16, 112, 112, None)), r"must fix the channel count"),
    (lambda: keras_r21d.R3D18(input_shape=(8, 112, 112, 3), frames=16), r"`frames`=16 disagrees.*8"),
    (lambda: keras_r21d.R2D18(input_shape=(None, 112, 112, 3)), r"frame count must be fixed.*frames=8 or 16"),
    (lambda: keras_r21d.R3D18(classes=0), r"`classes` must be a positive int.*received 0"),
    (lambda: keras_r21d.R3D18(classes=10.5), r"`classes` must be a positive int.*received 10.5"),
    (lambda: keras_r21d.R3D18(pooling="mean", include_top=False), r"`pooling`.*'mean'"),
    (lambda: keras_r21d.R2Plus1D18(midplanes="per_layer"), r"midplanes convention 'per_layer'.*per_conv"),
    (lambda: keras_r21d.R3D18(weights=123), r"`weights` must be None, a preset name or alias.*123"),
    (lambda: keras_r21d.R3D18(weights="imagenet"), r"Unknown weights 'imagenet' for r3d_18.*kinetics400"),
    (lambda: keras_r21d.R3D34(weights="kinetics400"), r"No 'kinetics400' weights for r3d_34"),
    (lambda: keras_r21d.R3D18(frames=-4), r"`frames` must be positive ints.*-4"),
    (lambda: VideoResNet(stages=("3d", "4d", "3d", "3d")), r"Unknown stage conv type '4d'"),
    (lambda: VideoResNet(blocks=(2, 2, 2)), r"one entry per stage.*4, 3 and 4"),
    (lambda: VideoResNet(stem="c3d"), r"Unknown stem 'c3d'"),
    (lambda: BasicBlock(64, "3D"), r"Unknown conv_type '3D'"),
    (lambda: Conv2Plus1D(64, midplanes=-3), r"`midplanes` must be a positive int or None.*-3"),
    (lambda: Stem("r2d"), r"needs `frames`.*frames=None"),
])
def test_bad_arguments(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match=r"'missing.weights.h5' does not exist"):
        keras_r21d.R3D18(weights="missing.weights.h5")


def test_input_tensor_and_input_shape_must_agree():
    tensor = keras.Input((8, 64, 64, 3))
    with pytest.raises(ValueError, match=r"`input_tensor` has shape.*\(8, 32, 32, 3\)"):
        keras_r21d.R3D18(input_tensor=tensor, input_shape=(8, 32, 32, 3))
    assert keras_r21d.R3D18(input_tensor=tensor).input_shape == (None, 8, 64, 64, 3)


def test_r2d_refuses_a_clip_of_another_length():
    model = keras_r21d.R2D18(frames=8, include_top=False)
    # Keras's input check names both shapes.
    with pytest.raises(ValueError, match=r"expected shape=\(None, 8, .*found shape=\(1, 16, "):
        model.predict(np.zeros((1, 16, 32, 32, 3), "float32"), verbose=0)


def test_weights_of_another_class_count_are_refused(tmp_path):
    path = tmp_path / "ten.weights.h5"
    keras_r21d.R3D10(classes=10, input_shape=(4, 32, 32, 3)).save_weights(path)
    with pytest.raises(ValueError, match=r"ten.weights.h5.*different network"):
        keras_r21d.R3D10(classes=400, input_shape=(4, 32, 32, 3), weights=str(path))


def test_wrong_channel_count_against_weights(tmp_path):
    path = tmp_path / "rgb.weights.h5"
    keras_r21d.R3D10(input_shape=(4, 32, 32, 3)).save_weights(path)
    with pytest.raises(ValueError, match=r"rgb.weights.h5.*input channel count"):
        keras_r21d.R3D10(input_shape=(4, 32, 32, 2), weights=str(path))
