"""Model cards: the README.md that push_to_hub uploads, read back from a local Hub and parsed
as the Hub parses it (huggingface_hub.ModelCard)."""

import json
import os
import re
import urllib.parse

import huggingface_hub
import keras
import pytest
from huggingface_hub import ModelCard
from test_presets import FakeHub, cache, hub, reply  # noqa: F401 - the local Hub on 127.0.0.1 (and its cache)

import keras_r21d
from keras_r21d import presets
from keras_r21d.models.complexity import count_params
from keras_r21d.presets import cards
from keras_r21d.presets.files import save_preset

TAGS = {"keras-r21d", "video-classification", "action-recognition"}
TORCHVISION = "r2plus1d_18_kinetics400_torchvision"
# Part of the Hub's license identifiers (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "other", "unknown"}


def hub_metadata_errors(content):
    """The checks of README.md metadata that the Hub makes before a commit, as far as a card
    here could fail them (POST /api/validate-yaml, which HfApi.create_commit calls)."""
    try:
        data = ModelCard(content).data.to_dict()  # YAML, and a model-index that parses
    except ValueError as error:
        return [str(error)]
    errors = [f'"{key}" must be a list of strings' for key in ("tags", "datasets", "metrics")
              if key in data and not all(isinstance(v, str) for v in data[key])]
    if "license" in data and data["license"] not in HUB_LICENSES:
        errors.append(f'"license" must be one of {sorted(HUB_LICENSES)}')
    if data.get("license") == "other" and not re.fullmatch(r"[a-z0-9.-]+", str(data.get("license_name"))):
        errors.append('"license_name" must be an id such as my-license-1.0 when "license" is "other"')
    return errors


@pytest.fixture
def card_hub(monkeypatch, request):
    """test_presets' local Hub, answering the Hub's metadata check of README.md too."""
    handle = FakeHub.handle

    def handle_with_yaml_check(self, handler, method):
        if urllib.parse.urlparse(handler.path).path != "/api/validate-yaml":
            return handle(self, handler, method)
        content = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))["content"]
        self.__dict__.setdefault("validated", []).append(content)
        errors = hub_metadata_errors(content)
        return reply(handler, 400 if errors else 200, json.dumps(
            {"errors": [{"message": e} for e in errors], "warnings": []}).encode())

    monkeypatch.setattr(FakeHub, "handle", handle_with_yaml_check)  # before the fixture starts its server
    return request.getfixturevalue("hub")


def tiny(name="r2plus1d_10", classes=3):
    keras.utils.set_random_seed(0)
    return keras_r21d.get_model(name, widths=(4, 4, 8, 8), stem_midplanes=3, classes=classes)


def pushed_card(server, directory, repo, **kwargs):
    """Pushes `directory` and parses the README.md downloaded from the local Hub `server`."""
    commit = presets.push_to_hub(directory, repo, token="hf_test", **kwargs)
    assert server.validated[-1] == server.commits[commit]["README.md"].decode()  # checked before the commit
    path = huggingface_hub.hf_hub_download(repo, "README.md", revision=commit, endpoint=server.url,
                                           cache_dir=os.environ["HF_HUB_CACHE"])
    return ModelCard.load(path)


def check_common(card, arch):
    data = card.data
    assert data.library_name == "keras" and data.pipeline_tag == "video-classification"
    assert TAGS | {arch} <= set(data.tags)
    assert "load_model" not in card.text


def test_a_fine_tuned_preset_gets_a_card(card_hub, tmp_path):
    model = tiny()
    directory = save_preset(model, tmp_path / "tuned", metadata={
        "labels": ["a", "b", "c"], "frames": 8, "trained_from": "kinetics400", "dataset": "ucf101",
        "split": 1, "model": "r2plus1d_10"})
    card = pushed_card(card_hub, directory, "me/tuned")
    check_common(card, "r2plus1d_10")
    data = card.data
    assert data.datasets == ["ucf101", "kinetics-400"]  # fine-tuned on, then pre-trained on
    assert data.license == "unknown"  # nothing records one
    assert data.eval_results is None and data.metrics is None  # nothing measured
    assert f"Parameters: {count_params(model):,} trainable" in card.text
    assert f"{model.count_params():,} with BatchNorm's moving statistics" in card.text
    macs = keras_r21d.count_macs(keras_r21d.load_preset(directory, input_shape=(8, 112, 112, 3)))
    assert f"{macs / 1e9:.4g} GMACs per 8x112x112 clip" in card.text
    assert "from `kinetics400` on UCF101 (split 1)" in card.text
    assert 'keras_r21d.get_model("r2plus1d_10", weights="hf://me/tuned")' in card.text
    assert 'keras_r21d.hub.R21DVideoClassifier.from_preset("hf://me/tuned")' in card.text
    assert not (directory / "README.md").exists()  # generated in memory: the preset is left alone

    again = save_preset(model, tmp_path / "again", metadata={"trained_from": "hf://me/tuned@v1", "dataset": "folder"})
    data = ModelCard(cards.model_card(again, "me/again")).data
    assert data.base_model == "me/tuned" and data.datasets is None  # a folder of the user's videos


def test_a_converted_preset_gets_the_manifest_facts(card_hub, tmp_path):
    entry = presets.get_preset(TORCHVISION)
    model = tiny("r2plus1d_18", classes=entry["classes"])
    # metadata.json of a converted preset names its manifest entry (presets._metadata).
    directory = save_preset(model, tmp_path / "converted", metadata={
        "name": TORCHVISION, "frames": 16, "labels": None, "accuracy": entry["accuracy"]})
    card = pushed_card(card_hub, directory, "me/converted")
    check_common(card, "r2plus1d_18")
    data = card.data
    assert data.datasets == ["kinetics-400"] and data.license == "bsd-3-clause"
    assert data.metrics == ["accuracy", "top_5_accuracy"]
    accuracy = entry["accuracy"]
    results = {r.metric_name.split(":")[0]: r for r in data.eval_results}
    assert {key: r.metric_value for key, r in results.items()} == {
        key: accuracy[key] for key in ("clip@1", "video@1", "video@5")}
    for result in results.values():
        assert (result.task_type, result.dataset_type, result.dataset_name, result.dataset_split) == (
            "video-classification", "kinetics-400", "Kinetics-400 validation", "validation")
        assert accuracy["protocol"] in result.metric_name
    assert accuracy["protocol"] in card.text and entry["license"] in card.text
    assert entry["description"] in card.text and entry["origin"]["url"] in card.text
    assert f"Parameters: {count_params(model):,} trainable" in card.text  # this network's, not the entry's
    assert "16x112x112 clip" in card.text

    text = cards.model_card(directory, "me/converted", entry=entry, parity=2.5e-6)
    assert "Max |logit difference| against the upstream PyTorch checkpoint" in text and "2.50e-06" in text
    with pytest.raises(ValueError, match="is for r3d_18; the preset holds r2plus1d_18"):
        cards.model_card(directory, "me/converted", entry=presets.get_preset("r3d_18_kinetics400_torchvision"))


def test_a_readme_of_the_users_own_is_uploaded_unchanged(card_hub, tmp_path):
    directory = save_preset(tiny(), tmp_path / "own", metadata={"labels": ["a", "b", "c"]})
    (directory / "README.md").write_text("---\nlicense: mit\n---\n# My card\n")
    card = pushed_card(card_hub, directory, "me/own")
    assert card.data.license == "mit" and card.text.strip() == "# My card"
    assert (directory / "README.md").read_text() == "---\nlicense: mit\n---\n# My card\n"
    # tools/convert_presets.py passes the card it wrote.
    card = pushed_card(card_hub, directory, "me/own", card="---\nlicense: apache-2.0\n---\n# Given\n")
    assert card.data.license == "apache-2.0" and (directory / "README.md").read_text().endswith("# My card\n")
    (directory / "README.md").write_text("---\nlicense: my own\n---\n")
    with pytest.raises(ValueError, match='(?s)Invalid metadata in README.md.*"license" must be one of'):
        presets.push_to_hub(directory, "me/own", token="hf_test")


def test_every_manifest_entry_has_a_card_the_hub_reads(monkeypatch):
    counted = {}

    def once_per_architecture(preset_dir, config, frames, crop):
        # Building every network at every clip length takes half a minute; the sizes are
        # counted once per architecture (at its first entry's settings) and reused.
        if config["architecture"] not in counted:
            counted[config["architecture"]] = complexity(preset_dir, config, frames, crop)
        return counted[config["architecture"]]

    complexity = cards._complexity
    monkeypatch.setattr(cards, "_complexity", once_per_architecture)
    for entry in presets.list_presets():
        name, arch, accuracy = entry["name"], entry["architecture"], entry["accuracy"]
        text = cards.model_card(None, f"me/{name}", entry=entry)
        assert hub_metadata_errors(text) == [], name
        card = ModelCard(text)
        check_common(card, arch)
        data = card.data
        assert data.datasets == {"kinetics400": ["kinetics-400"], "sports1m_kinetics400": ["sports-1m", "kinetics-400"],
                                 "ig65m_kinetics400": ["ig-65m", "kinetics-400"], "ig65m": ["ig-65m"]}[
            entry["aliases"][0]], name
        origin = entry["origin"]["format"]
        expected = {"torchvision": "bsd-3-clause", "caffe2": "apache-2.0", "ig65m": "other"}[origin]
        assert data.license == expected, name
        if expected == "other":
            assert data.license_name and data.license_link.startswith("https://github.com/"), name
        published = {k: accuracy[k] for k in ("clip@1", "video@1", "video@5") if accuracy[k] is not None}
        values = {r.metric_name.split(":")[0]: r.metric_value for r in data.eval_results or []}
        assert values == published, name
        assert (data.metrics is not None) == bool(published), name
        assert accuracy["protocol"] in card.text and entry["license"] in card.text, name
        if origin == "torchvision":  # the manifest states their parameter counts
            assert f"Parameters: {count_params_of(entry)} trainable" in card.text, name
    assert counted["r2plus1d_18"]["params"] == 31_505_325  # torchvision's per-block (2+1)D widths


def count_params_of(entry):
    """The parameter count in a torchvision entry's description: "(33,371,472 parameters"."""
    return entry["description"].split("(")[1].split(" parameters")[0]
