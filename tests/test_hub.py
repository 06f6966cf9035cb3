"""keras-hub and the Hugging Face Hub: keras_r21d presets load as keras-hub backbones and
video classifiers with the logits of `get_model`, keras-hub presets and native `.keras`
models round-trip through a Hub server on 127.0.0.1, and the core install needs no keras-hub."""

import configparser
import hashlib
import json
import pathlib
import re
import subprocess
import sys
import urllib.parse

import keras
import numpy as np
import pytest
from test_presets import FakeHub, reply

import keras_r21d
from keras_r21d.presets.files import save_preset

keras_hub = pytest.importorskip("keras_hub", reason="the keras-r21d[hub] extra is not installed")
hub = pytest.importorskip("keras_r21d.hub")

TINY = {"widths": (4, 4, 8, 8), "stem_midplanes": 3}
PREPROCESSING = {"resize": [40, 48], "crop": 32, "mean": [0.45, 0.4, 0.4], "std": [0.25, 0.2, 0.22]}


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """A converted-style preset (as save_preset writes it) of a small R(2+1)D."""
    keras.utils.set_random_seed(4)
    model = keras_r21d.get_model("r2plus1d_10", classes=3, **TINY)
    from conftest import randomize_batchnorm

    randomize_batchnorm(model)
    return save_preset(model, tmp_path_factory.mktemp("preset") / "tiny",
                       {"labels": ["a", "b", "c"], "preprocessing": PREPROCESSING})


def raw_clips(count=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 4, 36, 44, 3), dtype=np.uint8)


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_keras_hub_loads_a_preset_with_the_logits_of_get_model(preset):
    x = raw_clips()
    clips = keras_r21d.preprocess_input(x, **PREPROCESSING)
    reference = keras_r21d.get_model("r2plus1d_10", weights=str(preset), classifier_activation=None)
    headless = keras_r21d.get_model("r2plus1d_10", weights=str(preset), include_top=False)

    backbone = keras_hub.models.Backbone.from_preset(str(preset))  # keras-hub's own loader
    assert type(backbone) is hub.R21DBackbone
    np.testing.assert_allclose(numpy(backbone(clips)), numpy(headless(clips)), rtol=0, atol=1e-6)

    classifier = hub.R21DVideoClassifier.from_preset(str(preset))
    assert classifier.num_classes == 3 and classifier.activation is None
    assert classifier.metadata["labels"] == ["a", "b", "c"]
    # The preprocessor does the preset's resize, crop and normalisation on uint8 clips.
    np.testing.assert_allclose(classifier.predict(x, verbose=0), numpy(reference(clips)), rtol=0, atol=1e-6)
    without = hub.R21DVideoClassifier.from_preset(str(preset), preprocessor=None)
    np.testing.assert_allclose(numpy(without(clips)), numpy(reference(clips)), rtol=0, atol=1e-6)
    # load_weights=False: the preset's network and preprocessing, freshly initialised.
    fresh = hub.R21DVideoClassifier.from_preset(str(preset), load_weights=False)
    assert fresh.num_classes == 3 and fresh.preprocessor.video_converter.resize == PREPROCESSING["resize"]
    assert [w.shape for w in fresh.backbone.weights] == [w.shape for w in backbone.weights]
    assert not np.allclose(numpy(fresh.backbone.weights[0]), numpy(backbone.weights[0]))


def test_a_new_head_for_fine_tuning_keeps_the_backbone(preset, monkeypatch):
    from keras_r21d import presets

    # A preset by name, as the published ones: the manifest names it, the cache holds it.
    monkeypatch.setattr(presets, "_manifest", lambda: [
        {"name": "r2plus1d_10_tiny", "architecture": "r2plus1d_10", "description": "a test preset"}])
    monkeypatch.setattr(presets, "fetch_preset", lambda name: preset)
    assert "r2plus1d_10_tiny" in hub.R21DVideoClassifier.presets
    classifier = hub.R21DVideoClassifier.from_preset("r2plus1d_10_tiny", num_classes=101, dropout=0.5)
    assert classifier.output_shape == (None, 101) and classifier.dropout == 0.5
    assert "labels" not in classifier.metadata  # they named the preset's 3 classes
    clips = keras_r21d.preprocess_input(raw_clips(), **PREPROCESSING)
    headless = keras_r21d.get_model("r2plus1d_10", weights=str(preset), include_top=False)
    np.testing.assert_allclose(numpy(classifier.backbone(clips)), numpy(headless(clips)), atol=1e-6)
    # compile()'s defaults (keras-hub's): logits, so the loss is taken from logits.
    assert classifier.loss.get_config()["from_logits"] is True
    history = classifier.fit(raw_clips(4), np.array([0, 5, 17, 100]), batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_the_published_presets_are_listed():
    names = hub.R21DVideoClassifier.presets
    assert "r2plus1d_18_kinetics400_torchvision" in names and "r2plus1d_34_ig65m_32f" in names
    assert hub.R21DBackbone.presets.keys() == names.keys()


class HubWithSnapshots(FakeHub):
    """The fake Hub of test_presets plus the repo listings `snapshot_download` reads."""

    def handle(self, handler, method):
        path = urllib.parse.urlparse(handler.path).path
        if method == "GET" and (m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path)):
            sha = self.refs.get(f"{m.group(1)}@{urllib.parse.unquote(m.group(2))}")
            if sha is None:
                return reply(handler, 404, headers=[("X-Error-Code", "RepoNotFound")])
            return reply(handler, 200, json.dumps({
                "id": m.group(1), "modelId": m.group(1), "sha": sha, "private": False,
                "siblings": [{"rfilename": name} for name in sorted(self.commits[sha])]}).encode())
        if method == "GET" and (m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path)):
            rev = urllib.parse.unquote(m.group(2))
            files = self.commits[rev if rev in self.commits else self.refs[f"{m.group(1)}@{rev}"]]
            return reply(handler, 200, json.dumps([
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in sorted(files.items())]).encode())
        return super().handle(handler, method)


@pytest.fixture
def server(monkeypatch, tmp_path):
    fake = HubWithSnapshots()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_XET_CACHE", str(tmp_path / "xet"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("KERAS_R21D_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads its endpoint when imported (its constants and the HfApi behind its
    # module-level functions, which keras-hub calls): point them at the server.
    from huggingface_hub import constants, hf_api

    monkeypatch.setattr(constants, "ENDPOINT", fake.url)
    monkeypatch.setattr(hf_api.api, "endpoint", fake.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}")
    yield fake
    fake.server.close()


def test_a_keras_hub_preset_round_trips_through_the_hub(preset, server, tmp_path):
    classifier = hub.R21DVideoClassifier.from_preset(str(preset), num_classes=4,
                                                     metadata={"labels": ["w", "x", "y", "z"]})
    classifier.fit(raw_clips(4), np.array([0, 1, 2, 3]), batch_size=2, epochs=1, verbose=0)  # fine-tuned
    saved = tmp_path / "task_preset"
    classifier.save_to_preset(str(saved))
    assert {"config.json", "model.weights.h5", "task.json", "task.weights.h5", "preprocessor.json"} <= \
        {p.name for p in saved.iterdir()}
    keras_hub.upload_preset("hf://me/r21d-task", str(saved))
    loaded = hub.R21DVideoClassifier.from_preset("hf://me/r21d-task")
    x = raw_clips(seed=5)
    assert type(loaded) is hub.R21DVideoClassifier and loaded.num_classes == 4
    assert loaded.metadata["labels"] == ["w", "x", "y", "z"]  # kept through keras-hub's layout
    np.testing.assert_allclose(loaded.predict(x, verbose=0), classifier.predict(x, verbose=0), rtol=0, atol=1e-6)
    backbone = keras_hub.models.Backbone.from_preset("hf://me/r21d-task")
    clips = keras_r21d.preprocess_input(x, **PREPROCESSING)
    np.testing.assert_allclose(numpy(backbone(clips)), numpy(classifier.backbone(clips)), rtol=0, atol=1e-6)


def test_a_preset_pushed_with_push_to_hub_loads_in_keras_hub(preset, server):
    from keras_r21d.presets import push_to_hub

    push_to_hub(preset, "me/tiny", token="hf_test")
    clips = keras_r21d.preprocess_input(raw_clips(), **PREPROCESSING)
    reference = keras_r21d.get_model("r2plus1d_10", weights=str(preset), classifier_activation=None)
    backbone = keras_hub.models.Backbone.from_preset("hf://me/tiny")
    headless = keras_r21d.get_model("r2plus1d_10", weights=str(preset), include_top=False)
    np.testing.assert_allclose(numpy(backbone(clips)), numpy(headless(clips)), rtol=0, atol=1e-6)
    classifier = hub.R21DVideoClassifier.from_preset("hf://me/tiny", preprocessor=None)
    np.testing.assert_allclose(numpy(classifier(clips)), numpy(reference(clips)), rtol=0, atol=1e-6)


def test_a_model_saves_to_and_loads_from_hf_urls_natively(server):
    keras.utils.set_random_seed(1)
    model = keras_r21d.get_model("r3d_10", classes=2, input_shape=(4, 32, 32, 3), **TINY)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(2).normal(size=(2, 4, 32, 32, 3)).astype("float32")
    model.fit(x, np.array([0, 1]), verbose=0)  # fine-tuned, so the weights are not the initial ones
    model.save("hf://me/native")
    assert "config.json" in server.commits[server.refs["me/native@main"]]
    loaded = keras.saving.load_model("hf://me/native")  # no custom_objects: the classes are registered
    assert type(loaded) is keras_r21d.VideoResNet and loaded.get_config() == model.get_config()
    np.testing.assert_allclose(numpy(loaded(x)), numpy(model(x)), rtol=0, atol=1e-6)


def test_the_core_install_does_not_need_keras_hub():
    config = configparser.ConfigParser()
    config.read(pathlib.Path(__file__).parents[1] / "setup.cfg")
    assert "keras-hub" not in config["options"]["install_requires"]
    assert "keras-hub" in config["options.extras_require"]["hub"]
    code = ("import sys, keras_r21d; keras_r21d.get_model('r3d_10', widths=(4, 4, 8, 8)); "
            "import keras_r21d.presets.files; print('keras_hub' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr[-2000:]
