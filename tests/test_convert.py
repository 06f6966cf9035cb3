"""Converted checkpoints give the upstream PyTorch model's logits.

The PyTorch networks are built independently by tests/torch_reference.py (torchvision's
VideoResNet; the paper's networks with their own stems, per-conv widths, BN eps 1e-3) in
a separate process, because importing TensorFlow before torchvision crashes here.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import keras_r21d
from keras_r21d import cli
from keras_r21d.presets.convert import ConversionError, convert_checkpoint, infer_architecture
from keras_r21d.presets.files import load_preset, read_config, read_metadata

# Only look for torchvision: importing it after TensorFlow crashes this process.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                                reason="the PyTorch reference needs torch and torchvision")

PAPER = ["r2d_18", "fr2d_18", "r3d_18", "mc2_18", "mc3_18", "mc4_18", "mc5_18",
         "rmc2_18", "rmc3_18", "rmc4_18", "rmc5_18", "r2plus1d_18"]
TORCHVISION = ["r3d_18", "mc3_18", "r2plus1d_18"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    directory = tmp_path_factory.mktemp("torch_reference")
    kinds = [f"torchvision:{n}" for n in TORCHVISION] + ["ig65m"] + [f"caffe2:{n}" for n in PAPER]
    script = pathlib.Path(__file__).with_name("torch_reference.py")
    run = subprocess.run([sys.executable, str(script), str(directory), *kinds],
                         capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert run.returncode == 0, run.stderr[-3000:]
    return directory


def logits_of(preset, x):
    model = load_preset(preset, classifier_activation=None)
    return np.asarray(model.predict_on_batch(x))


def check_parity(preset, source):
    x = np.load(f"{source}.input.npy")
    expected = np.load(f"{source}.logits.npy")
    got = logits_of(preset, x)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4, np.abs(got - expected).max()


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_checkpoints(reference, tmp_path, name):
    source = reference / f"{name}.pth"
    preset = convert_checkpoint(source, tmp_path / name)
    config = read_config(preset)
    assert config["architecture"] == name and config["classes"] == 400
    assert config["bn_epsilon"] == 1e-5
    if name == "r2plus1d_18":
        assert config["midplanes"] == "per_block"
        assert keras_r21d.count_params(load_preset(preset)) == 31_505_325
    check_parity(preset, source)


def test_ig65m_r2plus1d_34(reference, tmp_path):
    source = reference / "r2plus1d_34_ig65m.pth"
    preset = convert_checkpoint(source, tmp_path / "ig65m")
    config = read_config(preset)
    assert (config["architecture"], config["classes"], config["midplanes"], config["bn_epsilon"]) == (
        "r2plus1d_34", 359, "per_conv", 1e-3)
    assert read_metadata(preset)["source"]["format"] == "ig65m"
    check_parity(preset, source)


@pytest.mark.parametrize("name", PAPER)
def test_caffe2_release_networks_through_the_cli(reference, tmp_path, name):
    source = reference / f"{name}.pkl"
    out = tmp_path / name
    assert cli.main(["convert", str(source), "-o", str(out), "--format", "caffe2", "--arch", name]) == 0
    config = read_config(out)
    assert config["architecture"] == name and config["bn_epsilon"] == 1e-3
    assert config["frames"] == (8 if name == "r2d_18" else None)  # R2D's stem spans the clip
    metadata = read_metadata(out)
    assert metadata["source"]["format"] == "caffe2" and len(metadata["source"]["sha256"]) == 64
    check_parity(out, source)


def _tensors(reference, name):
    from keras_r21d.presets.checkpoints import read_checkpoint

    return read_checkpoint(reference / name)


def test_strict_conversion_reports_what_does_not_match(reference, tmp_path):
    from keras_r21d.presets.convert import assign_weights

    tensors = _tensors(reference, "mc3_18.pth")
    model = keras_r21d.MC3_18(midplanes="per_block", bn_epsilon=1e-5)
    broken = dict(tensors)
    del broken["layer3.1.conv2.1.running_var"]
    broken["layer1.0.extra.weight"] = np.zeros(3, "float32")
    broken["fc.weight"] = np.zeros((10, 512), "float32")
    with pytest.raises(ConversionError) as error:
        assign_weights(model, broken, "torchvision")
    message = str(error.value)
    assert "conv4_2/bn2/moving_variance <- layer3.1.conv2.1.running_var" in message
    assert "layer1.0.extra.weight" in message
    assert "fc/kernel (512, 400) <- fc.weight (10, 512)" in message
    assign_weights(model, tensors, "torchvision")  # the intact checkpoint converts


def test_wrong_arch_is_refused(reference, tmp_path):
    with pytest.raises(ConversionError, match=r"holds a mc3_18 .* not r3d_18"):
        convert_checkpoint(reference / "mc3_18.pth", tmp_path / "x", arch="r3d_18")
    assert not (tmp_path / "x").exists()
    assert cli.main(["convert", str(reference / "mc3_18.pth"), "-o", str(tmp_path / "y"),
                     "--arch", "r3d_18"]) == 2


def test_inferred_architectures_of_the_caffe2_release(reference):
    for name in ("mc4_18", "rmc3_18", "fr2d_18"):
        assert infer_architecture(_tensors(reference, f"{name}.pkl"), "caffe2")["architecture"] == name
