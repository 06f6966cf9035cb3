"""Preprocessing against PyTorch/torchvision and an independent NumPy computation.

References:
- torchvision, run in a subprocess (importing TensorFlow before torchvision crashes):
  `F.interpolate(bilinear, align_corners=False, antialias=False)` on float32 frames,
  `torchvision.transforms.functional.center_crop`, then normalise in float64; and the
  `R2Plus1D_18_Weights.KINETICS400_V1.transforms()` preset itself.
- NumPy, written from PyTorch's source-index rule as interpolation matrices (another
  formulation than the gather + lerp of the implementation), in float64.

Tolerance: ATOL = 2e-6 on the normalised output, i.e. 2e-6 * 255 * 0.217 ~ 1.1e-4 grey
level (5e-7 on the [0, 1] scale). The float32 lerps round values up to 255 by ~2e-5
grey level (worst seen 4.3e-7 normalised). Errors it catches: an ulp off in a source
coordinate (plain float32 instead of PyTorch's fused multiply-add) moves values by up
to ~2e-3 grey level, i.e. ~3e-5 normalised; a wrong neighbour, weight or crop offset
moves random uint8 frames by whole grey levels.
"""

import doctest
import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from numpy_reference import bilinear_resize

from keras_r21d.data import preprocessing
from keras_r21d.data.preprocessing import (
    CROP,
    KINETICS_MEAN,
    KINETICS_STD,
    RESIZE,
    VideoPreprocessing,
    preprocess_input,
)

ATOL = 2e-6
MEAN, STD = np.array(KINETICS_MEAN), np.array(KINETICS_STD)
# (batch or None, T, H, W): downscales, upscales, odd sizes, the target size itself,
# a frame smaller than 2 pixels on one side, and a batched clip.
CASES = [(None, 2, 240, 320), (None, 2, 256, 340), (None, 3, 90, 120), (None, 2, 131, 97),
         (None, 1, 128, 171), (None, 2, 7, 1), (2, 2, 120, 160)]
BACKENDS = ["jax", "torch"]

WORKER = r'''
import json, os, sys
import numpy as np
backend = os.environ["KERAS_BACKEND"]
if backend == "torch":
    sys.modules.setdefault("triton", None)  # not needed on the CPU
    import torch
    import torchvision.transforms.functional as TF
    from torchvision.models.video import R2Plus1D_18_Weights
import keras
from keras_r21d.data.preprocessing import VideoPreprocessing, preprocess_input

directory = sys.argv[1]
inputs = np.load(os.path.join(directory, "clips.npz"))
out = {}
for key in inputs.files:
    clip = inputs[key]
    out[key] = keras.ops.convert_to_numpy(preprocess_input(clip))
    batch = clip if clip.ndim == 5 else clip[None]
    model = keras.Sequential([keras.Input(batch.shape[1:], dtype="uint8"), VideoPreprocessing()])
    out[key + ".model"] = model.predict(batch, verbose=0)
    if backend != "torch":
        continue
    mean, std = json.loads(sys.argv[2])
    frames = torch.from_numpy(clip.reshape(-1, *clip.shape[-3:])).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(
        frames.float(), size=(128, 171), mode="bilinear", align_corners=False, antialias=False)
    cropped = TF.center_crop(resized, [112, 112]).double() / 255.0
    ref = TF.normalize(cropped, mean, std).permute(0, 2, 3, 1)
    out[key + ".torch"] = ref.reshape(*clip.shape[:-3], 112, 112, 3).numpy()
    preset = R2Plus1D_18_Weights.KINETICS400_V1.transforms()
    video = torch.from_numpy(batch).permute(0, 1, 4, 2, 3)  # N, T, C, H, W
    for name, x in [("preset_float", video.float() / 255.0), ("preset_uint8", video)]:
        y = preset(x).permute(0, 2, 3, 4, 1).numpy()  # N, C, T, H, W -> N, T, H, W, C
        out[key + "." + name] = y.reshape(*clip.shape[:-3], 112, 112, 3)
np.savez(os.path.join(directory, backend + ".npz"), **out)
'''


def _clip(rng, batch, frames, height, width):
    shape = (frames, height, width, 3) if batch is None else (batch, frames, height, width, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def numpy_reference(clip, resize=RESIZE, crop=CROP):
    x = clip.astype("float64")
    if resize is not None:
        x = bilinear_resize(x, resize)
    if crop is not None:
        # torchvision's center_crop offsets.
        top = int(round((x.shape[-3] - crop) / 2.0))
        left = int(round((x.shape[-2] - crop) / 2.0))
        x = x[..., top:top + crop, left:left + crop, :]
    return (x / 255.0 - MEAN) / STD


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(2024)
    return {"x".join(map(str, case[1:])) + ("b" if case[0] else ""): _clip(rng, *case)
            for case in CASES}


@pytest.fixture(scope="module")
def other_backends(clips, tmp_path_factory):
    """Outputs of the JAX and torch backends (and torchvision's), from subprocesses."""
    missing = [m for m in ("jax", "torch", "torchvision") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (the `test` extra) for the references")
    directory = tmp_path_factory.mktemp("preprocessing")
    np.savez(directory / "clips.npz", **clips)
    stats = json.dumps([KINETICS_MEAN, KINETICS_STD])
    processes = {
        backend: subprocess.Popen(
            [sys.executable, "-c", WORKER, str(directory), stats],
            env={**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for backend in BACKENDS
    }
    for backend, process in processes.items():
        log = process.communicate(timeout=300)[0]
        assert process.returncode == 0, f"{backend} worker failed:\n{log[-3000:]}"
    return {backend: dict(np.load(directory / f"{backend}.npz")) for backend in BACKENDS}


def test_constants_are_those_of_the_reference():
    assert KINETICS_MEAN == (0.43216, 0.394666, 0.37645)
    assert KINETICS_STD == (0.22803, 0.22145, 0.216989)
    assert RESIZE == (128, 171) and CROP == 112


def test_equals_numpy_on_tensorflow(clips):
    for key, clip in clips.items():
        got = keras.ops.convert_to_numpy(preprocess_input(clip))
        assert got.dtype == np.float32 and got.shape == (*clip.shape[:-3], 112, 112, 3), key
        np.testing.assert_allclose(got, numpy_reference(clip), rtol=0, atol=ATOL, err_msg=key)


def test_float_input_in_0_255_gives_the_same(clips):
    clip = clips["2x240x320"]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(preprocess_input(clip.astype("float32"))),
                               keras.ops.convert_to_numpy(preprocess_input(clip)), rtol=0, atol=0)


def test_numpy_reference_equals_torch(clips, other_backends):
    # Checks the NumPy reference itself, so the TF-only tests below stand on it.
    for key, clip in clips.items():
        np.testing.assert_allclose(numpy_reference(clip), other_backends["torch"][key + ".torch"],
                                   rtol=0, atol=ATOL, err_msg=key)


@pytest.mark.parametrize("backend", ["tensorflow", *BACKENDS])
def test_equals_torchvision_on_every_backend(clips, other_backends, backend):
    for key, clip in clips.items():
        want = other_backends["torch"][key + ".torch"]
        if backend == "tensorflow":
            got = keras.ops.convert_to_numpy(preprocess_input(clip))
            batch = clip if clip.ndim == 5 else clip[None]
            model = keras.ops.convert_to_numpy(VideoPreprocessing()(batch))
        else:
            got, model = other_backends[backend][key], other_backends[backend][key + ".model"]
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"{backend} {key}")
        np.testing.assert_allclose(model.reshape(want.shape), want, rtol=0, atol=ATOL,
                                   err_msg=f"{backend} {key} (layer in a model)")


def test_equals_torchvision_video_preset(clips, other_backends):
    torch_out = other_backends["torch"]
    for key, clip in clips.items():
        got = keras.ops.convert_to_numpy(preprocess_input(clip))
        # The preset on float frames in [0, 1] (resize is linear, so this is our pipeline).
        np.testing.assert_allclose(got, torch_out[key + ".preset_float"], rtol=0, atol=ATOL,
                                   err_msg=key)
        # On uint8 frames torchvision rounds the resized frame back to uint8; we keep it
        # float, so the two differ by at most half a grey level.
        half_level = 0.5 / 255 / min(KINETICS_STD) + ATOL
        assert np.abs(got - torch_out[key + ".preset_uint8"]).max() <= half_level, key


@pytest.mark.parametrize("resize,crop", [(None, 112), ((64, 80), None), (None, None),
                                         ((60, 90), (48, 64)), (100, 99)])
def test_resize_and_crop_options(clips, resize, crop):
    clip = clips["2x131x97"] if resize else clips["2x240x320"]
    size = (resize, resize) if isinstance(resize, int) else resize
    got = keras.ops.convert_to_numpy(preprocess_input(clip, resize=resize, crop=crop))
    if isinstance(crop, tuple):
        want = numpy_reference(clip, size, None)
        top, left = (int(round((n - c) / 2.0)) for n, c in zip(want.shape[-3:-1], crop))
        want = want[..., top:top + crop[0], left:left + crop[1], :]
    else:
        want = numpy_reference(clip, size, crop)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    layer = VideoPreprocessing(resize=resize, crop=crop)
    assert layer.compute_output_shape((None, *clip.shape)) == (None, *got.shape)


def test_center_crop_rounds_halves_to_even_like_torchvision():
    # Column j of the frame holds the value j, so the output's first column is the offset.
    for width, left in [(171, 30), (169, 28), (113, 0), (115, 2), (112, 0)]:
        assert int(round((width - 112) / 2.0)) == left
        columns = np.arange(width, dtype="float32")[None, :, None]
        frame = np.broadcast_to(columns, (1, 112, width, 3))
        got = keras.ops.convert_to_numpy(preprocess_input(frame, resize=None, mean=(0, 0, 0),
                                                          std=(1 / 255,) * 3))
        assert got[0, 0, 0, 0] == left, width


def test_custom_mean_and_std():
    clip = np.full((1, 4, 4, 3), 51, dtype="uint8")  # 0.2 after scaling
    got = keras.ops.convert_to_numpy(preprocess_input(clip, resize=None, crop=None,
                                                      mean=(0.1, 0.2, 0.3), std=(0.5, 1.0, 2.0)))
    np.testing.assert_allclose(got[0, 0, 0], [0.2, 0.0, -0.05], atol=1e-6)


@pytest.mark.parametrize("shape,message", [
    ((240, 320, 3), r"\(T, H, W, 3\) or \(batch, T, H, W, 3\); received shape \(240, 320, 3\)"),
    ((2, 240, 320, 4), r"received shape \(2, 240, 320, 4\)"),
    ((1, 1, 2, 240, 320, 3), r"received shape \(1, 1, 2, 240, 320, 3\)"),
])
def test_wrong_rank_or_channels_name_the_shapes(shape, message):
    with pytest.raises(ValueError, match=message):
        preprocess_input(np.zeros(shape, "uint8"))
    with pytest.raises(ValueError, match=message):
        VideoPreprocessing().compute_output_shape(shape)


def test_bad_arguments_are_explained():
    clip = np.zeros((1, 100, 100, 3), "uint8")
    with pytest.raises(ValueError, match=r"Crop \(112, 112\) does not fit.*\(100, 100\)"):
        preprocess_input(clip, resize=None)
    with pytest.raises(ValueError, match=r"`resize` must be None, a positive int or 2"):
        preprocess_input(clip, resize=(128, 171, 3))
    with pytest.raises(ValueError, match=r"`crop` must be.*received \(0, 0\)"):
        VideoPreprocessing(crop=0)
    with pytest.raises(ValueError, match=r"`std` must hold 3 values"):
        VideoPreprocessing(std=(1.0,))


def test_layer_round_trips_through_a_keras_file(clips, tmp_path):
    clip = clips["2x120x160b"]
    inputs = keras.Input((None, 120, 160, 3), dtype="uint8")
    layer = VideoPreprocessing(resize=(100, 130), crop=(96, 112), name="prep")
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling3D()(layer(inputs)))
    assert layer.output.shape == (None, None, 96, 112, 3)
    path = tmp_path / "prep.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # registered: no custom_objects needed
    prep = loaded.get_layer("prep")
    assert isinstance(prep, VideoPreprocessing)
    assert prep.get_config() == layer.get_config()
    assert (prep.resize, prep.crop) == ((100, 130), (96, 112))
    np.testing.assert_array_equal(loaded.predict(clip, verbose=0), model.predict(clip, verbose=0))


def test_layer_from_config_keeps_defaults():
    layer = VideoPreprocessing.from_config(VideoPreprocessing(name="p").get_config())
    assert (layer.resize, layer.crop, layer.mean, layer.std) == (RESIZE, (CROP, CROP),
                                                                 KINETICS_MEAN, KINETICS_STD)


def test_layer_in_tf_data_also_with_unknown_frame_sizes(clips):
    import tensorflow as tf

    layer = VideoPreprocessing()
    sizes = ["2x240x320", "2x256x340", "3x90x120"]
    # Frames of varying size: the map traces with H and W unknown.
    dataset = tf.data.Dataset.from_generator(
        lambda: (clips[key] for key in sizes),
        output_signature=tf.TensorSpec((None, None, None, 3), tf.uint8))
    dataset = dataset.map(lambda x: layer(x[None])[0])
    assert dataset.element_spec.shape.as_list() == [None, 112, 112, 3]
    for key, got in zip(sizes, dataset.as_numpy_iterator()):
        np.testing.assert_allclose(got, numpy_reference(clips[key]), rtol=0, atol=ATOL, err_msg=key)
    # Unknown sizes without resize: the crop offsets (odd margins) are computed in the graph.
    rng = np.random.default_rng(7)
    odd = [_clip(rng, None, 2, 117, 171), _clip(rng, None, 2, 131, 113)]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(odd), output_signature=tf.TensorSpec((None, None, None, 3), tf.uint8))
    crop_only = VideoPreprocessing(resize=None)
    for clip, got in zip(odd, dataset.map(lambda x: crop_only(x[None])[0]).as_numpy_iterator()):
        np.testing.assert_allclose(got, numpy_reference(clip, None, 112), rtol=0, atol=ATOL)


def test_batched_tf_data_pipeline(clips):
    import tensorflow as tf

    clip = clips["2x240x320"]
    dataset = tf.data.Dataset.from_tensor_slices(np.stack([clip, clip[::-1]])).batch(2)
    got = next(iter(dataset.map(VideoPreprocessing()))).numpy()
    want = numpy_reference(np.stack([clip, clip[::-1]]))
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_docstring_examples():
    result = doctest.testmod(preprocessing, extraglobs={"keras": keras},
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
