"""A preset's config.json and metadata.json come from strangers: every key is checked
before it reaches get_model, and each error names the file and what was wrong."""

import functools
import json
import pathlib
import re

import numpy as np
import pytest

import keras_r21d
from keras_r21d.presets.files import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE, load_preset, save_preset

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
    """config.json with settings changed (or removed: KeyError): `classes` beside keras-hub's
    backbone config, the others in it."""
    config = json.loads((preset_dir / CONFIG_FILE).read_text())
    for key, value in changes.items():
        where = config if key == "classes" else config["config"]
        if value is KeyError:
            where.pop(key)
        else:
            where[key] = value
    return json.dumps(config)


def test_a_valid_preset_loads_to_the_same_outputs(preset):
    directory, model = preset
    x = np.random.default_rng(0).normal(size=(1, 4, 32, 32, 3)).astype("float32")
    loaded = load_preset(directory)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert loaded.metadata["labels"] == ["a", "b", "c"]


BAD = [
    ("weights key", {"weights": "kinetics400"}, "unknown keys ['weights']"),
    ("missing classes", {"classes": KeyError}, "missing keys ['classes']"),
    ("unregistered network", {"architecture": "resnet50"}, "architecture must be a registered network"),
    ("classes as text", {"classes": "3"}, "classes must be an integer >= 1; it is '3'"),
    ("classes as bool", {"classes": True}, "classes must be an integer >= 1"),
    ("widths of 3", {"widths": [4, 4, 8]}, "widths must be a list of 4 integers >= 1"),
    ("negative width", {"widths": [4, -4, 8, 8]}, "widths must be a list of integers >= 1, one per stage"),
    ("midplanes unknown", {"midplanes": "per_layer"}, "midplanes must be 'per_conv' or 'per_block'"),
    ("momentum 1", {"bn_momentum": 1}, "bn_momentum must be a number in [0, 1)"),
    ("epsilon 0", {"bn_epsilon": 0}, "bn_epsilon must be a number in (0, 1)"),
    ("frames 0", {"frames": 0}, "frames must be an integer >= 1 or null"),
    ("no architecture, no table", {"architecture": None}, "missing keys ['stem', 'stages', 'blocks']"),
    ("architecture and a table", {"stem": "3d"}, "a registered architecture comes with its own table"),
    ("blocks of 3", {"architecture": None, "stem": "3d", "stages": ["3d"] * 4, "blocks": [1, 1, 1]},
     "blocks must be a list of 4 integers >= 1, one per stage"),
]


@pytest.mark.parametrize("changes, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_keys_are_refused_naming_the_file(preset, tmp_path, changes, message):
    directory = with_config(preset[0], tmp_path, edited(preset[0], **changes))
    with pytest.raises(ValueError) as error:
        load_preset(directory)
    assert str(directory / CONFIG_FILE) in str(error.value) and message in str(error.value), str(error.value)


def test_the_flat_config_of_earlier_versions_still_loads(preset, tmp_path):
    """Before keras-hub support config.json held the settings at its top level; cached and
    published presets of that layout load as before."""
    directory, model = preset
    on_file = json.loads((directory / CONFIG_FILE).read_text())
    flat = {**on_file["config"], "classes": on_file["classes"]}
    assert on_file["registered_name"] == "keras_r21d>R21DBackbone" and flat["architecture"] == "r2plus1d_18"
    np.testing.assert_array_equal(outputs(load_preset(with_config(directory, tmp_path, json.dumps(flat)))),
                                  outputs(model))


@pytest.mark.parametrize("changes, message", [
    ({"class_name": "ResNetBackbone"}, "is not the config of a keras_r21d backbone: {'class_name': 'ResNetBackbone'}"),
    ({"build_config": {}}, "found ['build_config', 'class_name', 'classes', 'config', 'module', 'registered_name']"),
    ({"config": [1]}, "with `config` an object"),
])
def test_a_foreign_keras_hub_config_is_refused(preset, tmp_path, changes, message):
    config = {**json.loads((preset[0] / CONFIG_FILE).read_text()), **changes}
    with pytest.raises(ValueError, match=re.escape(message)):
        load_preset(with_config(preset[0], tmp_path, json.dumps(config)))


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


def outputs(model):
    x = np.random.default_rng(1).normal(size=(1, 4, 32, 32, 3)).astype("float32")
    return np.asarray(model(x))


def test_an_interrupted_save_over_a_preset_leaves_the_old_one_whole(preset, tmp_path, monkeypatch):
    directory, model = preset
    target = with_config(directory, tmp_path, (directory / CONFIG_FILE).read_text())
    (target / "README.md").write_text("my card")
    other = keras_r21d.get_model("r2plus1d_18", classes=5, input_shape=(4, 32, 32, 3), **TINY)

    def dies_half_way(path, *args, **kwargs):
        pathlib.Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(other, "save_weights", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_preset(other, target, {"labels": list("vwxyz")})
    loaded = load_preset(target)  # the old preset: its classes, its weights, its labels
    np.testing.assert_array_equal(outputs(loaded), outputs(model))
    assert loaded.metadata["labels"] == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited"]  # no staging folder left behind
    monkeypatch.undo()
    save_preset(other, target, {"labels": list("vwxyz")})  # the same save, not interrupted
    replaced = load_preset(target)
    np.testing.assert_array_equal(outputs(replaced), outputs(other))
    assert replaced.metadata["labels"] == list("vwxyz") and (target / "README.md").read_text() == "my card"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited"]


def test_saving_into_a_folder_of_other_files_is_refused(preset, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds other files than a preset's"):
        save_preset(preset[1], tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def with_weights(preset_dir, tmp_path, shape, write):
    """A copy of the preset whose first weights dataset is replaced by one of `shape`,
    float32, with its data written or only declared (HDF5 allocates it lazily)."""
    import h5py

    target = with_config(preset_dir, tmp_path, (preset_dir / CONFIG_FILE).read_text())
    with h5py.File(target / WEIGHTS_FILE, "a") as f:
        names = []
        f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        del f[names[0]]
        dataset = f.create_dataset(names[0], shape=shape, dtype="float32")
        if write:
            dataset[...] = 1.0
    return target, names[0]


def test_a_weights_file_declaring_a_gigabyte_is_refused_before_reading(preset, tmp_path):
    import tracemalloc

    directory, model = preset
    target, _ = with_weights(directory, tmp_path, (1 << 28,), write=False)  # 1 GiB declared
    assert (target / WEIGHTS_FILE).stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"model\.weights\.h5' declares 1024\.\d MiB of weights; r2plus1d_18 has "
                           rf"{model.count_params() * 4 / 2**20:.1f} MiB"):
            load_preset(target)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak


def test_weights_declared_but_never_written_are_refused(preset, tmp_path):
    import h5py

    directory, _ = preset
    with h5py.File(directory / WEIGHTS_FILE, "r") as f:
        names = []
        f.visititems(lambda name, item: names.append((name, item.shape)) if isinstance(item, h5py.Dataset) else None)
    target, name = with_weights(directory, tmp_path, names[0][1], write=False)
    with pytest.raises(ValueError, match=rf"declares weights it does not hold \({name}\)"):
        load_preset(target)
    (target / WEIGHTS_FILE).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(ValueError, match=r"model\.weights\.h5' is not a readable HDF5 weights file"):
        load_preset(target)


@pytest.mark.parametrize("changes", [{"classes": 5}, {"include_top": False, "pooling": "avg"}])
def test_another_head_builds_one_model_and_keeps_every_other_weight(preset, monkeypatch, changes):
    """As timm's load_pretrained: one network built, the classifier left new, every other
    weight the preset's; the features equal those of the saved network."""
    import keras

    from keras_r21d import models

    directory, saved = preset
    builds, real = [], models.VideoResNet

    @functools.wraps(real)
    def counting(*args, **kwargs):
        builds.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "VideoResNet", counting)
    loaded = load_preset(directory, **changes)
    assert len(builds) == 1
    assert "labels" not in loaded.metadata  # they named the preset's classes
    if changes.get("classes") == 5:  # the caller's names of the new classes are kept
        named = load_preset(directory, **changes, metadata={"labels": list("vwxyz")})
        assert named.metadata["labels"] == list("vwxyz")
    for layer in loaded.layers:
        if layer.name != "fc":
            for a, b in zip(layer.get_weights(), saved.get_layer(layer.name).get_weights(), strict=True):
                np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(1).normal(size=(2, 4, 32, 32, 3)).astype("float32")
    features = keras.Model(saved.input, saved.get_layer("fc").input)
    if "classes" in changes:
        assert loaded.output_shape == (None, 5)
        assert not np.array_equal(loaded.get_layer("fc").get_weights()[0][:, :3], saved.get_layer("fc").get_weights()[0])
        np.testing.assert_array_equal(np.asarray(keras.Model(loaded.input, loaded.get_layer("fc").input)(x)),
                                      np.asarray(features(x)))
    else:
        np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(features(x)))


def test_a_weights_file_of_other_shapes_is_refused(preset, tmp_path):
    directory, _ = preset
    target, name = with_weights(directory, tmp_path, (7, 7), write=True)
    with pytest.raises(ValueError, match=r"holds 187 arrays, r2plus1d_18 with 3 classes has 187 of other shapes \(\[\(7, 7\)\]\)"):
        load_preset(target, classes=5)


def test_settings_and_metadata_travel_in_the_keras_config(preset, tmp_path):
    """A preset's network, saved as .keras and as an inference graph, reloads with the same
    settings, metadata and outputs, with no attribute copied by hand."""
    import keras

    directory, model = preset
    loaded = load_preset(directory)
    loaded.save(tmp_path / "model.keras")
    again = keras.saving.load_model(tmp_path / "model.keras")
    x = np.random.default_rng(2).normal(size=(2, 4, 32, 32, 3)).astype("float32")
    assert again.get_config() == loaded.get_config() and again.metadata["labels"] == ["a", "b", "c"]
    assert again.get_config()["widths"] == list(TINY["widths"]) and again.get_config()["classes"] == 3
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(model(x)))
    fast = keras_r21d.optimize_for_inference(again)
    assert fast.metadata == again.metadata
    fast.save(tmp_path / "fast.keras")
    fast_again = keras.saving.load_model(tmp_path / "fast.keras")
    assert fast_again.metadata["labels"] == ["a", "b", "c"] and fast_again.get_config() == fast.get_config()
    np.testing.assert_allclose(np.asarray(fast_again(x)), np.asarray(model(x)), atol=1e-5)
    # The preset written from the reloaded model is the preset it came from.
    copy = save_preset(again, tmp_path / "copy")
    for name in (CONFIG_FILE, METADATA_FILE):
        assert json.loads((copy / name).read_text()) == json.loads((directory / name).read_text())


def test_a_network_outside_the_registry_saves_and_loads_as_a_preset(tmp_path):
    model = keras_r21d.VideoResNet(stem="2d", stages=("3d", "2d"), blocks=(1, 2), widths=(4, 8), classes=2,
                                   input_shape=(4, 32, 32, 3), name="custom")
    directory = save_preset(model, tmp_path / "custom", {"labels": ["x", "y"]})
    config = json.loads((directory / CONFIG_FILE).read_text())["config"]
    assert config["architecture"] is None and config["stages"] == ["3d", "2d"] and config["blocks"] == [1, 2]
    loaded = load_preset(directory)
    x = np.random.default_rng(3).normal(size=(1, 4, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    with pytest.raises(ValueError, match=r"outside the registry \(stem '2d', stages \['3d', '2d'\]\), not 'r3d_18'; load them with"):
        load_preset(directory, model_name="r3d_18")


def test_mixed_precision_and_extra_metadata_survive(preset, tmp_path):
    import keras

    directory, _ = preset
    loaded = load_preset(directory, metadata={"source": "mine"})
    assert loaded.metadata == {"labels": ["a", "b", "c"], "source": "mine"}
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = keras_r21d.get_model("r3d_10", classes=2, input_shape=(4, 32, 32, 3), widths=(4, 4, 8, 8))
    finally:
        keras.config.set_dtype_policy(policy)
    mixed.save(tmp_path / "mixed.keras")
    again = keras.saving.load_model(tmp_path / "mixed.keras")
    assert again.get_layer("conv1").dtype_policy.name == "mixed_bfloat16" == mixed.get_config()["dtype_policy"]
    assert keras.config.dtype_policy().name == policy.name  # the caller's policy is restored
    with pytest.raises(ValueError, match="`metadata` must hold plain JSON values"):
        keras_r21d.VideoResNet(widths=(4, 4, 8, 8), metadata={"mean": np.float32(0.5)})
