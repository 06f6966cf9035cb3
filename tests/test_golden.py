"""Conversion parity without torch: a committed checkpoint and the logits PyTorch gave
for it (written once by tools/make_golden.py from torchvision's own classes)."""

import pathlib

import numpy as np

import keras_r21d
from keras_r21d.convert import convert_checkpoint
from keras_r21d.preset_io import load_preset, read_config

GOLDEN = pathlib.Path(__file__).with_name("data") / "golden"


def test_golden_checkpoint_converts_to_the_same_logits(tmp_path):
    preset = convert_checkpoint(GOLDEN / "r2plus1d_tiny.pth", tmp_path / "tiny")
    config = read_config(preset)
    assert config["architecture"] == "r2plus1d_18"
    assert config["widths"] == [4, 8, 16, 32] and config["stem_midplanes"] == 3
    assert config["midplanes"] == "per_block" and config["classes"] == 5
    model = load_preset(preset, classifier_activation=None)
    x = np.load(GOLDEN / "r2plus1d_tiny.input.npy")
    expected = np.load(GOLDEN / "r2plus1d_tiny.logits.npy")
    assert np.abs(np.asarray(model.predict_on_batch(x)) - expected).max() < 1e-4


def test_golden_preset_loads_through_a_factory(tmp_path):
    preset = convert_checkpoint(GOLDEN / "r2plus1d_tiny.pth", tmp_path / "tiny")
    model = keras_r21d.R2Plus1D18(weights=str(preset), classifier_activation=None)
    x = np.load(GOLDEN / "r2plus1d_tiny.input.npy")
    expected = np.load(GOLDEN / "r2plus1d_tiny.logits.npy")
    assert np.abs(np.asarray(model.predict_on_batch(x)) - expected).max() < 1e-4
