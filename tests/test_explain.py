"""Grad-CAM against references written here: by hand at conv5 (the classifier is linear in
the pooled map, so the channel weights are the class's classifier row over t*h*w), and with
the test's own GradientTape at an earlier stage."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import randomize_batchnorm

import keras_r21d
from keras_r21d.explain import grad_cam

TINY = {"widths": (4, 4, 8, 8), "classes": 5}


def network(name, **kwargs):
    keras.utils.set_random_seed(11)
    model = keras_r21d.get_model(name, **TINY, **kwargs)
    randomize_batchnorm(model)
    return model


def clip(frames=8, seed=0):
    return np.random.default_rng(seed).normal(size=(frames, 48, 48, 3)).astype(np.float32)


@pytest.mark.parametrize("name, kwargs", [("r3d_10", {}), ("r2d_18", {"frames": 8})])
def test_conv5_map_is_the_classifier_row_over_the_map(name, kwargs):
    """score = sum_k W[k, c] mean(A_k) + b, so dscore/dA_k = W[k, c] / (t h w) everywhere."""
    model = network(name, **kwargs)
    x = clip()
    result = grad_cam(model, x, layer="conv5", class_index=3)
    expected = hand_conv5(model, x, 3)
    t = expected.shape[0]
    np.testing.assert_allclose(result["map"], expected, rtol=1e-4, atol=1e-7)
    assert result["class_index"] == 3
    probs = np.asarray(model(x[None], training=False))[0]
    assert result["probability"] == pytest.approx(probs[3], rel=1e-5)
    heatmap = result["heatmap"]
    assert heatmap.shape == (8, 48, 48) and heatmap.min() >= 0
    assert heatmap.max() == pytest.approx(1.0) or not expected.any()
    if name.startswith("r2d"):  # time collapsed in the first layer: one map, repeated over the frames
        assert t == 1 and np.allclose(heatmap, heatmap[:1])


def hand_conv5(model, x, class_index):
    """conv5's map by hand: score = sum_k W[k, c] mean(A_k) + b, so dscore/dA_k = W[k, c] / (t h w)."""
    stage = np.asarray(keras_r21d.stage_feature_model(model)(x[None], training=False)["conv5"])[0]
    t, h, w, _ = stage.shape
    return np.maximum(stage @ np.asarray(model.get_layer("fc").kernel)[:, class_index], 0) / (t * h * w)


def tape_conv3(model, x):
    """conv3's map (the output of its last block) of the top class, with this test's own
    GradientTape: (map, class)."""
    last = max(layer.name for layer in model.layers if layer.name.startswith("conv3_"))
    probe = keras.Model(model.input, [model.get_layer(last).output, model.get_layer("fc").input])
    with tf.GradientTape() as tape:
        stage, features = probe(x[None], training=False)
        logits = features @ model.get_layer("fc").kernel + model.get_layer("fc").bias
        top = int(np.argmax(logits[0]))
        score = logits[0, top]
    gradient = tape.gradient(score, stage)[0].numpy()
    return np.maximum(np.einsum("thwk,k->thw", stage[0].numpy(), gradient.mean(axis=(0, 1, 2))), 0), top


def test_an_earlier_stage_matches_a_gradient_tape_reference():
    model = network("r3d_10")
    x = clip(seed=1)
    result = grad_cam(model, x, layer="conv3")  # the top class by default
    expected, top = tape_conv3(model, x)
    assert result["class_index"] == top
    np.testing.assert_allclose(result["map"], expected, rtol=1e-4, atol=1e-7)
    assert result["heatmap"].shape == (8, 48, 48)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_jax_and_pytorch_give_the_same_maps(tmp_path, backend):
    """The references are TensorFlow's (hand and tape); the worker runs grad_cam on `backend`."""
    import os
    import pathlib
    import subprocess
    import sys

    x = clip(seed=2)
    np.save(tmp_path / "input.npy", x)
    models = {"r3d_10": network("r3d_10"), "r2d_18": network("r2d_18", frames=8)}
    for name, model in models.items():
        model.save_weights(tmp_path / f"{name}.weights.h5")
    worker = pathlib.Path(__file__).with_name("grad_cam_worker.py")
    run = subprocess.run([sys.executable, str(worker), str(tmp_path), *models],
                         env=dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES=""),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for name, model in models.items():
        got = np.load(tmp_path / f"{name}.{backend}.npz")
        np.testing.assert_allclose(got["conv5"], hand_conv5(model, x, 3), rtol=1e-4, atol=1e-7, err_msg=name)
        expected, top = tape_conv3(model, x)
        assert int(got["top"]) == top
        np.testing.assert_allclose(got["conv3"], expected, rtol=1e-4, atol=1e-7, err_msg=name)
        probs = np.asarray(model(x[None], training=False))[0]
        assert float(got["probability"]) == pytest.approx(probs[3], rel=1e-5)


def test_bad_input_is_refused():
    model = network("r3d_10")
    with pytest.raises(ValueError, match="Unknown layer 'conv6'"):
        grad_cam(model, clip(), layer="conv6")
    with pytest.raises(ValueError, match="`class_index` 7 is out of range: the model has 5 classes"):
        grad_cam(model, clip(), class_index=7)
    with pytest.raises(TypeError, match="include_top=True"):
        grad_cam(keras_r21d.get_model("r3d_10", widths=(4, 4, 8, 8), include_top=False), clip())


def test_explain_command_writes_a_grid_and_a_gif(tmp_path, capsys):
    from media import write_video
    from PIL import Image

    from keras_r21d import cli

    model = network("r3d_10")
    preset = keras_r21d.save_preset(model, tmp_path / "preset", {"labels": list("abcde")})
    video = tmp_path / "v.avi"
    write_video(video, np.random.default_rng(2).integers(0, 255, (20, 40, 52, 3), dtype=np.uint8))
    code = cli.main(["explain", str(video), "--model", "r3d_10", "--weights", str(preset), "--class", "c",
                     "--layer", "conv4", "--clips", "2", "--frames", "8", "-o", str(tmp_path / "cam")])
    out = capsys.readouterr().out
    assert code == 0 and out.count("clip ") == 2 and "c (" in out and "conv4 map 2x" in out
    for k in range(2):
        with Image.open(tmp_path / f"cam_clip{k}.png") as png:
            assert png.size == (1280, 360)
            assert np.asarray(png.convert("L")).std() > 5  # drawn, not blank
        with Image.open(tmp_path / f"cam_clip{k}.gif") as gif:
            assert gif.n_frames == 8 and gif.size == (112, 112)
    assert cli.main(["explain", str(video), "--model", "r3d_10", "--weights", str(preset), "--class", "zebra",
                     "--frames", "8"]) == 2
    assert "Unknown class 'zebra'" in capsys.readouterr().err


def square_clip(rng, present, frames=8, size=48, side=12):
    """Dark noise; with `present`, a bright square moving right across it. Returns the
    clip (preprocessed like the network's input: about zero mean, unit spread) and the
    square's (top, left) in each frame."""
    x = rng.normal(0, 0.3, size=(frames, size, size, 3)).astype(np.float32)
    top = int(rng.integers(0, size - side))
    lefts = np.linspace(int(rng.integers(0, 8)), size - side - int(rng.integers(0, 8)), frames).round().astype(int)
    if present:
        for t, left in enumerate(lefts):
            x[t, top:top + side, left:left + side] += 2.5
    return x, [(top, left) for left in lefts]


def test_the_heat_map_finds_the_moving_square():
    """A tiny network trained to tell 'a moving square' from 'noise only': Grad-CAM of the
    square class peaks on the square in most frames. conv2, because R3D keeps every frame
    there (deeper stages halve time, and a cell then spans two positions of the square)."""
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = keras_r21d.get_model("r3d_10", widths=(8, 8, 16, 16), classes=2, input_shape=(8, 48, 48, 3))
    labels = np.arange(128) % 2
    clips = np.stack([square_clip(rng, label)[0] for label in labels])
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(clips, labels, batch_size=16, epochs=6, verbose=0)
    x, boxes = square_clip(rng, True)
    result = grad_cam(model, x, layer="conv2", class_index=1)
    assert result["probability"] > 0.9
    hits = 0
    for heatmap, (top, left) in zip(result["heatmap"], boxes):
        row, column = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        hits += top - 4 <= row < top + 16 and left - 4 <= column < left + 16  # the square, give or take a cell
    assert hits >= 6, hits
