"""Layers against independent NumPy references written from PyTorch's definitions."""

import keras
import numpy as np
import pytest
from conftest import randomize_batchnorm
from numpy_reference import batchnorm, bn_params, conv3d, relu

from keras_r21d import BasicBlock, Conv2Plus1D, Stem, ZeroPaddedConv3D, midplanes


def test_midplanes_per_conv_widths_of_the_paper():
    # REFERENCE section 2: per-conv widths for t = d = 3.
    published = {(64, 64): 144, (64, 128): 230, (128, 128): 288, (128, 256): 460,
                 (256, 256): 576, (256, 512): 921, (512, 512): 1152}
    assert {pair: midplanes(*pair) for pair in published} == published


def test_midplanes_formula_for_other_kernels():
    # floor(t d^2 Nin Nout / (d^2 Nin + t Nout)) by hand: t=5, d=3, 10 -> 20: 9000 / 190.
    assert midplanes(10, 20, (5, 3, 3)) == 47


@pytest.mark.parametrize("size", [(4, 8, 8), (5, 9, 7), (6, 10, 12)])
@pytest.mark.parametrize("kernel,strides,padding", [
    ((3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ((1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ((3, 7, 7), (1, 2, 2), (1, 3, 3)),
    ((1, 1, 1), (2, 2, 2), (0, 0, 0)),
    ((4, 7, 7), (1, 2, 2), (0, 3, 3)),
])
def test_zero_padded_conv3d_pads_like_pytorch(rng, size, kernel, strides, padding):
    if size[0] < kernel[0] - 2 * padding[0]:
        pytest.skip("clip shorter than the kernel")
    x = rng.normal(size=(2, *size, 3)).astype("float32")
    layer = ZeroPaddedConv3D(5, kernel, strides=strides, zero_padding=padding, use_bias=False)
    got = np.asarray(layer(x))
    want = conv3d(x, np.asarray(layer.kernel), strides, padding)
    assert got.shape == want.shape == (2, *layer.compute_output_shape((2, *size, 3))[1:])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(8, 8, 8), (7, 9, 11), (4, 6, 6)])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2plus1d_equals_numpy(rng, size, stride):
    in_channels, filters = 6, 10
    layer = Conv2Plus1D(filters, strides=stride, bn_epsilon=1e-3)
    x = rng.normal(size=(2, *size, in_channels)).astype("float32")
    layer.build(x.shape)
    randomize_batchnorm(layer)
    got = np.asarray(layer(x, training=False))
    # Spec: 1x3x3 conv to M = floor(27*6*10 / (9*6 + 3*10)) = 19 channels, stride (1,s,s),
    # pad (0,1,1); BN; ReLU; 3x1x1 conv, stride (s,1,1), pad (1,0,0).
    assert layer.resolved_midplanes == 27 * in_channels * filters // (9 * in_channels + 3 * filters) == 19
    mid = conv3d(x, np.asarray(layer.spatial_conv.kernel), (1, stride, stride), (0, 1, 1))
    mid = relu(batchnorm(mid, *bn_params(layer.spatial_bn), 1e-3))
    want = conv3d(mid, np.asarray(layer.temporal_conv.kernel), (stride, 1, 1), (1, 0, 0))
    assert np.asarray(layer.spatial_conv.kernel).shape == (1, 3, 3, in_channels, 19)
    assert np.asarray(layer.temporal_conv.kernel).shape == (3, 1, 1, 19, filters)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def _reference_unit(conv_type, layer, x, strides):
    if conv_type == "3d":
        return conv3d(x, np.asarray(layer.kernel), strides, (1, 1, 1))
    if conv_type == "2d":
        return conv3d(x, np.asarray(layer.kernel), strides, (0, 1, 1))
    mid = conv3d(x, np.asarray(layer.spatial_conv.kernel), (1, *strides[1:]), (0, 1, 1))
    mid = relu(batchnorm(mid, *bn_params(layer.spatial_bn), layer.bn_epsilon))
    return conv3d(mid, np.asarray(layer.temporal_conv.kernel), (strides[0], 1, 1), (1, 0, 0))


@pytest.mark.parametrize("conv_type", ["3d", "2d", "2plus1d"])
@pytest.mark.parametrize("stride,in_channels", [(1, 8), (2, 4), (1, 4)])
def test_basic_block_equals_numpy(rng, conv_type, stride, in_channels):
    filters, eps = 8, 1e-5
    block = BasicBlock(filters, conv_type, stride=stride, bn_epsilon=eps)
    x = rng.normal(size=(1, 4, 6, 6, in_channels)).astype("float32")
    block.build(x.shape)
    randomize_batchnorm(block)
    got = np.asarray(block(x, training=False))
    # 2D stages never stride in time (REFERENCE section 1).
    strides = (1, stride, stride) if conv_type == "2d" else (stride,) * 3
    y = relu(batchnorm(_reference_unit(conv_type, block.conv1, x, strides), *bn_params(block.bn1), eps))
    y = batchnorm(_reference_unit(conv_type, block.conv2, y, (1, 1, 1)), *bn_params(block.bn2), eps)
    if stride != 1 or in_channels != filters:
        shortcut = conv3d(x, np.asarray(block.shortcut_conv.kernel), strides, (0, 0, 0))
        shortcut = batchnorm(shortcut, *bn_params(block.shortcut_bn), eps)
    else:
        assert not block.has_projection
        shortcut = x
    np.testing.assert_allclose(got, relu(y + shortcut), atol=1e-5, rtol=1e-5)


def test_block_midplanes_conventions():
    x_shape = (1, 4, 8, 8, 64)
    per_conv = BasicBlock(128, "2plus1d", stride=2, midplanes="per_conv")
    per_block = BasicBlock(128, "2plus1d", stride=2, midplanes="per_block")
    per_conv.build(x_shape)
    per_block.build(x_shape)
    # REFERENCE section 2: 64->128 is 230; per conv the second conv (128->128) gets 288.
    assert (per_conv.conv1.resolved_midplanes, per_conv.conv2.resolved_midplanes) == (230, 288)
    assert (per_block.conv1.resolved_midplanes, per_block.conv2.resolved_midplanes) == (230, 230)


@pytest.mark.parametrize("kind,kernel,padding", [
    ("3d", (3, 7, 7), (1, 3, 3)), ("2d", (1, 7, 7), (0, 3, 3)), ("r2d", (6, 7, 7), (0, 3, 3)),
])
def test_stems_equal_numpy(rng, kind, kernel, padding):
    stem = Stem(kind, frames=6 if kind == "r2d" else None, bn_epsilon=1e-3)
    x = rng.normal(size=(1, 6, 10, 10, 3)).astype("float32")
    stem.build(x.shape)
    randomize_batchnorm(stem)
    want = conv3d(x, np.asarray(stem.conv.kernel), (1, 2, 2), padding)
    want = relu(batchnorm(want, *bn_params(stem.bn), 1e-3))
    assert np.asarray(stem.conv.kernel).shape[:3] == kernel
    np.testing.assert_allclose(np.asarray(stem(x, training=False)), want, atol=1e-5, rtol=1e-5)
    if kind == "r2d":
        assert want.shape[1] == 1


def test_2plus1d_stem_has_45_midplanes_and_equals_numpy(rng):
    stem = Stem("2plus1d", bn_epsilon=1e-3)
    x = rng.normal(size=(1, 4, 10, 10, 3)).astype("float32")
    stem.build(x.shape)
    randomize_batchnorm(stem)
    conv = stem.conv
    assert np.asarray(conv.spatial_conv.kernel).shape == (1, 7, 7, 3, 45)
    assert np.asarray(conv.temporal_conv.kernel).shape == (3, 1, 1, 45, 64)
    y = conv3d(x, np.asarray(conv.spatial_conv.kernel), (1, 2, 2), (0, 3, 3))
    y = relu(batchnorm(y, *bn_params(conv.spatial_bn), 1e-3))
    y = conv3d(y, np.asarray(conv.temporal_conv.kernel), (1, 1, 1), (1, 0, 0))
    y = relu(batchnorm(y, *bn_params(stem.bn), 1e-3))
    np.testing.assert_allclose(np.asarray(stem(x, training=False)), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer", [
    ZeroPaddedConv3D(4, 3, strides=2, zero_padding=1, use_bias=False),
    Conv2Plus1D(4, strides=2, midplanes=7),
    BasicBlock(8, "2plus1d", stride=2, midplanes="per_block"),
    Stem("r2d", frames=4),
], ids=lambda layer: type(layer).__name__)
def test_layers_round_trip_through_keras_files(tmp_path, rng, layer):
    inputs = keras.Input((4, 8, 8, 3))
    model = keras.Model(inputs, layer(inputs))
    x = rng.normal(size=(2, 4, 8, 8, 3)).astype("float32")
    path = tmp_path / "layer.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: the layers are registered
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    rebuilt = type(layer).from_config(layer.get_config())
    assert rebuilt.get_config() == layer.get_config()


def test_r2d_stem_refuses_another_clip_length():
    stem = Stem("r2d", frames=8)
    with pytest.raises(ValueError, match=r"exactly 8 frames.*received 16"):
        stem(np.zeros((1, 16, 16, 16, 3), "float32"))


def test_conv_reports_too_small_input():
    with pytest.raises(ValueError, match="too small for kernel 3"):
        ZeroPaddedConv3D(4, 3).compute_output_shape((1, 2, 8, 8, 3))
