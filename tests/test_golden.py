"""Conversion parity without torch: a committed checkpoint and the logits PyTorch gave
for it (written once by tools/make_golden.py from torchvision's own classes)."""

import pathlib

import numpy as np

import keras_r21d
from keras_r21d.presets.convert import convert_checkpoint
from keras_r21d.presets.files import load_preset, read_config

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


def test_another_class_count_gets_a_new_head_once(tmp_path, caplog):
    preset = convert_checkpoint(GOLDEN / "r2plus1d_tiny.pth", tmp_path / "tiny")
    pretrained = load_preset(preset)
    with caplog.at_level("WARNING", logger="keras_r21d"):
        model = keras_r21d.R2Plus1D18(weights=str(preset), classes=3)
        keras_r21d.R2Plus1D18(weights=str(preset), classes=3)
    assert sum("classifier is dropped" in r.message for r in caplog.records) == 1
    assert model.get_layer("fc").kernel.shape == (32, 3)
    for layer in model.layers:
        if layer.weights and layer.name != "fc":
            for new, old in zip(layer.get_weights(), pretrained.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(new, old)


def test_preset_as_feature_extractor_and_fixed_settings(tmp_path):
    import pytest

    preset = convert_checkpoint(GOLDEN / "r2plus1d_tiny.pth", tmp_path / "tiny")
    x = np.load(GOLDEN / "r2plus1d_tiny.input.npy")
    features = keras_r21d.R2Plus1D18(weights=str(preset), include_top=False, pooling="avg")
    full = load_preset(preset, classifier_activation=None)
    fc = full.get_layer("fc")
    logits = np.asarray(features(x)) @ np.asarray(fc.kernel) + np.asarray(fc.bias)
    np.testing.assert_allclose(logits, np.asarray(full(x)), atol=1e-5)
    with pytest.raises(ValueError, match=r"fix midplanes='per_block'; received midplanes='per_conv'"):
        keras_r21d.R2Plus1D18(weights=str(preset), midplanes="per_conv")
    with pytest.raises(ValueError, match=r"are for 'r2plus1d_18', not 'r3d_18'"):
        keras_r21d.R3D18(weights=str(preset))


def test_convert_cli_stores_labels_frames_and_preprocessing(tmp_path, capsys):
    from keras_r21d import cli
    from keras_r21d.presets.files import read_metadata

    names = tmp_path / "names.txt"
    names.write_text("a\r\nb\r\nc\r\nd\r\ne\r\n")
    out = tmp_path / "tiny"
    assert cli.main(["convert", str(GOLDEN / "r2plus1d_tiny.pth"), "-o", str(out),
                     "--labels", str(names), "--frames", "8"]) == 0
    metadata = read_metadata(out)
    assert metadata["labels"] == ["a", "b", "c", "d", "e"] and metadata["frames"] == 8
    # REFERENCE section 4.
    assert metadata["preprocessing"] == {"resize": [128, 171], "crop": 112,
                                         "mean": [0.43216, 0.394666, 0.37645],
                                         "std": [0.22803, 0.22145, 0.216989]}
    import hashlib
    assert metadata["source"]["sha256"] == hashlib.sha256((GOLDEN / "r2plus1d_tiny.pth").read_bytes()).hexdigest()
    names.write_text("a\nb\n")
    assert cli.main(["convert", str(GOLDEN / "r2plus1d_tiny.pth"), "-o", str(tmp_path / "bad"),
                     "--labels", str(names)]) == 2
    assert "2 class names were given for a checkpoint of 5 classes" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
