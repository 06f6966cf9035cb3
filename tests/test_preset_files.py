"""A preset's config.json and metadata.json come from strangers: every key is checked
before it reaches get_model, and each error names the file and what was wrong."""

import json

import numpy as np
import pytest

import keras_r21d
from keras_r21d.preset_io import CONFIG_FILE, METADATA_FILE, load_preset, save_preset

TINY = {"widths": (4, 4, 8, 8), "stem_midplanes": 3}


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    model = keras_r21d.get_model("r2plus1d_18", classes=3, input_shape=(4, 32, 32, 3), **TINY)
    return save_preset(model, tmp_path_factory.mktemp("preset") / "tiny", {"labels": ["a", "b", "c"]}), model


def with_config(preset_dir, tmp_path, text):
    target = tmp_path / "edited"
    target.mkdir()
    for f in preset_dir.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    (target / CONFIG_FILE).write_text(text)
    return target


def edited(preset_dir, **changes):
    config = json.loads((preset_dir / CONFIG_FILE).read_text())
    for key, value in changes.items():
        if value is KeyError:
            config.pop(key)
        else:
            config[key] = value
    return json.dumps(config)


def test_a_valid_preset_loads_to_the_same_outputs(preset):
    directory, model = preset
    x = np.random.default_rng(0).normal(size=(1, 4, 32, 32, 3)).astype("float32")
    loaded = load_preset(directory)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert loaded.preset_metadata["labels"] == ["a", "b", "c"]


BAD = [
    ("weights key", {"weights": "kinetics400"}, "unknown keys ['weights']"),
    ("missing classes", {"classes": KeyError}, "missing keys ['classes']"),
    ("unregistered network", {"architecture": "resnet50"}, "architecture must be a registered network"),
    ("classes as text", {"classes": "3"}, "classes must be an integer >= 1; it is '3'"),
    ("classes as bool", {"classes": True}, "classes must be an integer >= 1"),
    ("widths of 3", {"widths": [4, 4, 8]}, "widths must be a list of 4 integers >= 1"),
    ("negative width", {"widths": [4, -4, 8, 8]}, "widths must be a list of 4 integers >= 1"),
    ("midplanes unknown", {"midplanes": "per_layer"}, "midplanes must be 'per_conv' or 'per_block'"),
    ("momentum 1", {"bn_momentum": 1}, "bn_momentum must be a number in [0, 1)"),
    ("epsilon 0", {"bn_epsilon": 0}, "bn_epsilon must be a number in (0, 1)"),
    ("frames 0", {"frames": 0}, "frames must be an integer >= 1 or null"),
]


@pytest.mark.parametrize("changes, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_keys_are_refused_naming_the_file(preset, tmp_path, changes, message):
    directory = with_config(preset[0], tmp_path, edited(preset[0], **changes))
    with pytest.raises(ValueError) as error:
        load_preset(directory)
    assert str(directory / CONFIG_FILE) in str(error.value) and message in str(error.value), str(error.value)


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "must hold a JSON object; it holds a list"),
    ('{"architecture": ', "is not valid JSON"),
    ("\xff\xfe", "is not valid JSON"),
])
def test_config_that_is_not_a_json_object_is_refused_naming_the_file(preset, tmp_path, text, message):
    directory = with_config(preset[0], tmp_path, text)
    with pytest.raises(ValueError) as error:
        load_preset(directory)
    assert str(directory / CONFIG_FILE) in str(error.value) and message in str(error.value), str(error.value)


def test_metadata_that_is_not_a_json_object_is_refused_naming_the_file(preset, tmp_path):
    directory = with_config(preset[0], tmp_path, (preset[0] / CONFIG_FILE).read_text())
    (directory / METADATA_FILE).write_text('"labels"')
    with pytest.raises(ValueError, match="metadata.json' must hold a JSON object; it holds a str"):
        load_preset(directory)
