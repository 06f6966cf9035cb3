"""Resuming a fine-tuning run: checkpoint and position are one record, the settings must match,
a damaged checkpoint falls back to the previous one, and the interrupted epoch's metrics survive.

The runs use a network of a few layers (tracing R(2+1)D-10 takes most of a run's time); the
resume logic does not depend on the architecture (test_training.py resumes R(2+1)D-10).
"""

import hashlib
import json

import keras
import numpy as np
import pytest
from media import random_videos

from keras_r21d import training


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((None, None, None, 3)), keras.layers.Conv3D(4, 3, strides=2),
        keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.GlobalAveragePooling3D(),
        keras.layers.Dense(2, activation="softmax")], name="tiny")
    return model


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    # 7 videos in batches of 2: 4 steps per epoch, the last one a single clip.
    return random_videos(tmp_path_factory.mktemp("videos"), 7, frames=8, classes=2)


def run(videos, out, seed=0, **kwargs):
    """A cheap fine-tuning run; `seed` only initialises the network (a resumed run loads it)."""
    settings = {"train_videos": videos, "val_videos": videos[:2], "labels": ["a", "b"], "model": tiny_model(seed),
                "frames": 4, "batch_size": 2, "epochs": 2, "output_dir": out, "checkpoint_every": 1,
                "eval_clips": 0, "progress": False, "learning_rate": 0.05, "resize": None, "crop": 32}
    settings.update(kwargs)
    return training.finetune(**settings)


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory):
    """The uninterrupted run: final weights and metrics.csv."""
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run(videos, out)
    # Not a keras_r21d network, so no preset: the run ends with Keras's own file of the model.
    saved = keras.saving.load_model(result["run_dir"] / "model.keras")
    assert result["preset"] is None
    for a, b in zip(saved.weights, result["model"].weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    return [np.asarray(w) for w in result["model"].weights], (out / "metrics.csv").read_text()


def assert_same_as(reference, result):
    weights, metrics = reference
    for a, b in zip(result["model"].weights, weights):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=a.path)
    assert (result["run_dir"] / "metrics.csv").read_text() == metrics


class Interrupted(Exception):
    pass


def interrupted_run(videos, out, monkeypatch, at):
    """Runs until the checkpoint of `(epoch, batches_done)` is written, then dies."""
    save = training._Checkpointer.save

    def save_then_die(self, model, epoch, batches_done):
        save(self, model, epoch, batches_done)
        if (epoch, batches_done) == at:
            raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(training._Checkpointer, "save", save_then_die)
        with pytest.raises(Interrupted):
            run(videos, out)


def checkpoint_files(out):
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_a_kill_between_the_weights_and_their_record_resumes_from_the_previous_checkpoint(
        videos, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    write_json = training.write_json

    def die_before_the_record_of_step_6(path, data):  # epoch 1, batch 2: the weights are written
        if path.name == "step-000000006.json":
            raise Interrupted
        write_json(path, data)

    with monkeypatch.context() as patch:
        patch.setattr(training, "write_json", die_before_the_record_of_step_6)
        with pytest.raises(Interrupted):
            run(videos, out)
    assert checkpoint_files(out) == ["step-000000004.json", "step-000000004.weights.h5",
                                     "step-000000005.json", "step-000000005.weights.h5",
                                     "step-000000006.weights.h5"]
    resumed = run(videos, out, seed=1)
    assert "at epoch 2, batch 1 from" in capsys.readouterr().out  # step 5's record, with step 5's weights
    assert_same_as(reference, resumed)
    # The last two checkpoints, the record-less weights gone.
    assert checkpoint_files(out) == ["step-000000007.json", "step-000000007.weights.h5",
                                     "step-000000008.json", "step-000000008.weights.h5"]


def test_a_run_resumed_with_other_settings_is_refused(videos, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_run(videos, out, monkeypatch, at=(0, 1))
    with pytest.raises(ValueError, match="other settings") as refused:
        run(videos, out, batch_size=3, learning_rate=0.1)
    message = str(refused.value)
    # Only what differs, each with both values, and the ways out.
    assert [line for line in message.splitlines() if line.startswith("  ")] == [
        "  batch_size: 2 (saved) vs 3 (now)", "  learning_rate: 0.05 (saved) vs 0.1 (now)"]
    assert "Resume it with the saved settings, or train in another output directory" in message
    # What does not change the training may: checkpoint frequency, validation, progress bars.
    assert_same_as(reference, run(videos, out, checkpoint_every=3, progress=True))


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(videos, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_run(videos, out, monkeypatch, at=(1, 2))
    newest = out / "checkpoints" / "step-000000006.weights.h5"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=r"step-000000006\.json: step-000000006\.weights\.h5 does not match"):
        resumed = run(videos, out, seed=1)
    assert_same_as(reference, resumed)


def test_the_interrupted_epochs_metrics_cover_all_its_batches(videos, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_run(videos, out, monkeypatch, at=(1, 2))
    record = json.loads((out / "checkpoints" / "step-000000006.json").read_text())
    # The sums of the epoch's first two batches: 4 clips, their losses and hits.
    assert record["metrics"]["loss/count"] == record["metrics"]["accuracy/count"] == 4
    assert 0 < record["metrics"]["loss/total"] and record["metrics"]["accuracy/total"] in (0, 1, 2, 3, 4)
    resumed = run(videos, out, seed=1)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # a header and one row per epoch, none repeated
    np.testing.assert_allclose(np.loadtxt(rows[1:], delimiter=","),
                               np.loadtxt(reference[1].splitlines()[1:], delimiter=","), rtol=1e-6)
    assert_same_as(reference, resumed)  # exactly, in fact


def test_a_kill_after_the_epochs_metrics_row_but_before_its_checkpoint_leaves_one_row(
        videos, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    save = training._Checkpointer.save

    def die_at_the_end_of_epoch_0(self, model, epoch, batches_done):  # metrics.csv has its row
        if (epoch, batches_done) == (1, 0):
            raise Interrupted
        save(self, model, epoch, batches_done)

    with monkeypatch.context() as patch:
        patch.setattr(training._Checkpointer, "save", die_at_the_end_of_epoch_0)
        with pytest.raises(Interrupted):
            run(videos, out)
    assert len((out / "metrics.csv").read_text().splitlines()) == 2
    assert_same_as(reference, run(videos, out, seed=1))  # epoch 0's last step again, its row once


def write_checkpoint(folder, step, settings=None, weights=b"weights"):
    """A checkpoint as `_Checkpointer.save` writes it (the weights need not be HDF5 here)."""
    settings = settings or {"batch_size": 2}
    (folder / f"step-{step:09d}.weights.h5").write_bytes(weights)
    training.write_json(folder / f"step-{step:09d}.json", {
        "epoch": 0, "batches_done": step, "metrics": {}, "weights": f"step-{step:09d}.weights.h5",
        "sha256": hashlib.sha256(weights).hexdigest(), "settings": settings,
        "settings_sha256": training._settings_sha256(settings)})


@pytest.mark.parametrize("damage", ["missing weights", "other weights", "broken record", "edited settings"])
def test_every_kind_of_damage_falls_back_and_no_intact_checkpoint_is_an_error(tmp_path, damage):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    write_checkpoint(folder, 1)
    write_checkpoint(folder, 2)
    newest, newest_weights = folder / "step-000000002.json", folder / "step-000000002.weights.h5"
    if damage == "missing weights":
        newest_weights.unlink()
    elif damage == "other weights":
        newest_weights.write_bytes(b"other")
    elif damage == "broken record":
        newest.write_text(newest.read_text()[:20])
    else:
        record = json.loads(newest.read_text())
        newest.write_text(json.dumps(dict(record, settings={"batch_size": 4})))
    with pytest.warns(UserWarning, match="step-000000002.json") as caught:
        record = training._find_checkpoint(tmp_path)
    assert record["batches_done"] == 1 and "step-000000001.json" in str(caught[0].message)
    (folder / "step-000000001.weights.h5").unlink()
    with pytest.raises(ValueError, match="No intact checkpoint") as error:
        training._find_checkpoint(tmp_path)
    assert "step-000000001.json" in str(error.value) and "step-000000002.json" in str(error.value)


def test_a_checkpoint_of_the_old_layout_is_not_resumed_blindly(tmp_path):
    (tmp_path / "state.json").write_text('{"epoch": 1, "batches_done": 0}')
    with pytest.raises(ValueError, match="earlier keras-r21d"):
        training._find_checkpoint(tmp_path)
