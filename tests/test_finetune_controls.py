"""The fine-tuning controls: frozen stages and BN, dropout, label smoothing, class weights,
a class-balanced sampler and a head learning-rate multiplier, each checked against what it
must do (bit-identical frozen weights, NumPy losses, sampling statistics, the SGD/Adam rule)."""

import json

import keras
import numpy as np
import pytest
from media import random_videos

from keras_r21d import cli, training
from keras_r21d.applications import get_model
from keras_r21d.data.pipeline import clip_dataset, epoch_order
from keras_r21d.presets.files import save_preset

TINY = {"widths": (4, 4, 8, 8), "stem_midplanes": 3}
FRAMES, SIZE = 12, (32, 32)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return random_videos(tmp_path_factory.mktemp("videos"), 8, frames=FRAMES, size=SIZE, classes=2)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A preset to fine-tune from, so the weights before training are known."""
    keras.utils.set_random_seed(3)
    model = get_model("r2plus1d_10", classes=2, **TINY)
    return save_preset(model, tmp_path_factory.mktemp("start") / "preset"), \
        {v.path: np.array(v) for v in model.weights}


def tune(videos, start, out, **kwargs):
    settings = dict(train_videos=videos, labels=["a", "b"], model="r2plus1d_10", weights=str(start[0]),
                    frames=4, batch_size=4, epochs=1, output_dir=out, checkpoint_every=None, validate=False,
                    eval_clips=0, model_kwargs=TINY, progress=False, learning_rate=0.05, warmup_epochs=0,
                    resize=None, crop=32)
    settings.update(kwargs)
    return training.finetune(**settings)


def changed(before, model):
    return {v.path: bool(np.any(np.array(v) != before[v.path])) for v in model.weights}


def record_settings(out):
    return json.loads(max((out / "checkpoints").glob("step-*.json")).read_text())["settings"]


def test_freeze_until_keeps_the_stem_and_early_stages_bit_identical(videos, start, tmp_path):
    result = tune(videos, start, tmp_path / "run", freeze_until="conv3", dropout=0.5, balanced_sampling=True,
                  head_lr_multiplier=10.0)
    moved = changed(start[1], result["model"])
    frozen = {p: m for p, m in moved.items() if p.split("/")[0].split("_")[0] in ("conv1", "conv2", "conv3")}
    free = {p: m for p, m in moved.items() if p not in frozen}
    assert len(frozen) > 20 and not any(frozen.values())  # kernels, BN scale/shift and statistics
    trainable = {v.path for v in result["model"].trainable_weights}
    assert trainable and all(p.split("/")[0].split("_")[0] in ("conv4", "conv5", "fc") for p in trainable)
    assert all(free.values()), [p for p, m in free.items() if not m]  # incl. conv4/conv5 BN statistics
    assert result["model"].get_layer("dropout").rate == 0.5
    settings = record_settings(tmp_path / "run")
    assert (settings["freeze_until"], settings["dropout"], settings["balanced_sampling"],
            settings["head_lr_multiplier"]) == ("conv3", 0.5, True, 10.0)
    assert "freeze_bn" not in settings and "class_weight" not in settings  # defaults: as before
    # A changed control is a different run: resuming with it is refused, naming it.
    with pytest.raises(ValueError, match="freeze_until: \"conv3\" \\(saved\\) vs \"conv2\""):
        tune(videos, start, tmp_path / "run", freeze_until="conv2", dropout=0.5, balanced_sampling=True,
             head_lr_multiplier=10.0, epochs=2)


def test_freeze_bn_keeps_every_batch_norm_layer_exactly(videos, start, tmp_path):
    result = tune(videos, start, tmp_path / "run", freeze_bn=True)
    moved = changed(start[1], result["model"])
    bn = {p: m for p, m in moved.items() if "bn" in p.split("/")[-2] or p.endswith(("moving_mean", "moving_variance"))}
    assert any(p.endswith("moving_mean") for p in bn) and any(p.endswith("gamma") for p in bn)
    assert not any(bn.values()), [p for p, m in bn.items() if m]
    others = {p: m for p, m in moved.items() if p not in bn}
    assert others and all(others.values())
    assert record_settings(tmp_path / "run")["freeze_bn"] is True


@pytest.mark.parametrize("class_weight, smoothing", [(None, 0.0), ("balanced", 0.0), ({0: 0.25, 1: 3.0}, 0.2)])
def test_the_loss_is_the_weighted_smoothed_cross_entropy(videos, start, tmp_path, class_weight, smoothing):
    # 6 videos of class 0 and 2 of class 1. A learning rate of 0 and frozen BN keep the network
    # fixed and the same as in inference; whole, unflipped, uncropped clips make the inputs known.
    skewed = [(path, int(k >= 6)) for k, (path, _) in enumerate(videos)]
    result = tune(skewed, start, tmp_path / "run", frames=FRAMES, crop=SIZE[0], flip=False, freeze_bn=True,
                  learning_rate=0.0, class_weight=class_weight, label_smoothing=smoothing)
    from keras_r21d.data.preprocessing import KINETICS_MEAN, KINETICS_STD
    from keras_r21d.data.video import read_clip

    clips = np.stack([(read_clip(path, 0, FRAMES) / 255.0 - KINETICS_MEAN) / KINETICS_STD for path, _ in skewed])
    p = np.asarray(result["model"](clips, training=False), "float64")
    labels = np.array([label for _, label in skewed])
    target = (1 - smoothing) * np.eye(2)[labels] + smoothing / 2
    cross_entropy = -(target * np.log(p)).sum(axis=1)
    if class_weight == "balanced":
        weights = np.where(labels == 0, 8 / (2 * 6), 8 / (2 * 2))
    elif class_weight:
        weights = np.array([class_weight[label] for label in labels])
    else:
        weights = np.ones(8)
    # Keras: each batch's loss is sum(w * ce) / batch size; the epoch's, their mean by clips.
    np.testing.assert_allclose(result["history"][0]["loss"], (weights * cross_entropy).mean(), rtol=1e-5)


def test_the_balanced_sampler_draws_every_class_equally_often():
    labels = np.repeat([0, 1, 2], [900, 90, 10])
    order = epoch_order(labels, seed=7, epoch=0, balanced=True)
    assert len(order) == 1000 and order.min() >= 0 and order.max() < 1000
    counts = np.bincount(labels[order], minlength=3)
    # Each draw is a class with probability 1/3: a binomial count, within 4 standard deviations.
    n, p = 1000, 1 / 3
    assert np.all(np.abs(counts - n * p) < 4 * np.sqrt(n * p * (1 - p))), counts
    assert len(set(order[labels[order] == 2])) <= 10  # the 10 rare videos, each repeated
    # Within the rare class every video is equally likely too (a chi-square with 9 degrees of freedom).
    rare = np.bincount(order[labels[order] == 2] - 990, minlength=10)
    expected = rare.sum() / 10
    assert ((rare - expected) ** 2 / expected).sum() < 27.9  # the 0.999 quantile of chi2(9)
    # A new epoch, a new draw; the same (seed, epoch), the same draw.
    assert not np.array_equal(order, epoch_order(labels, seed=7, epoch=1, balanced=True))
    np.testing.assert_array_equal(order, epoch_order(labels, seed=7, epoch=0, balanced=True))
    # Without balancing: a permutation.
    np.testing.assert_array_equal(np.sort(epoch_order(labels, 7, 0)), np.arange(1000))


def test_the_balanced_dataset_follows_the_draw_and_augments_repeats_apart(videos):
    skewed = [(path, int(k == 7)) for k, (path, _) in enumerate(videos)]  # one video of class 1
    batches = list(clip_dataset(skewed, training=True, frames=4, batch_size=8, resize=None, crop=24, epoch=2,
                                seed=1, balanced=True))
    clips, labels = (np.concatenate([np.asarray(b[i]) for b in batches]) for i in (0, 1))
    order = epoch_order([label for _, label in skewed], 1, 2, balanced=True)
    np.testing.assert_array_equal(labels, [skewed[i][1] for i in order])
    repeats = np.flatnonzero(order == 7)
    assert len(repeats) >= 2, order  # seeded: the rare video is drawn several times ...
    assert not np.array_equal(clips[repeats[0]], clips[repeats[1]])  # ... with different crops
    with pytest.raises(ValueError, match="needs training=True and an `epoch`"):
        clip_dataset(skewed, training=True, balanced=True)


def _toy(weights):
    inputs = keras.Input((3,))
    x = keras.layers.Dense(2, name="body")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(x))
    model.set_weights(weights)
    return model


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_the_head_learns_at_a_multiple_of_the_rate(kind):
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=s).astype("float32") for s in ((3, 2), (2,), (2, 2), (2,))]
    model = _toy(weights)
    lr, multiplier = 0.01, 10.0
    opt = training._optimizer(kind, lr, 0.9, 0.0, model, multiplier)
    grads = [rng.normal(size=w.shape).astype("float32") for w in weights]
    opt.apply(grads, model.trainable_variables)
    for w, g, v, rate in zip(weights, grads, model.trainable_variables, [lr, lr, lr * multiplier, lr * multiplier]):
        if kind == "sgd":  # first step with momentum: velocity = -rate * g
            expected = w - rate * g
        else:  # Adam's first step: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected
            b1, b2, eps = 0.9, 0.999, 1e-7
            step = rate * np.sqrt(1 - b2) / (1 - b1)
            expected = w - step * (1 - b1) * g / (np.sqrt((1 - b2) * g**2) + eps)
        np.testing.assert_allclose(np.array(v), expected, rtol=1e-5, atol=1e-6, err_msg=v.path)  # float32


def test_a_model_with_the_head_optimizer_saves_and_loads(tmp_path):
    model = _toy([np.ones((3, 2)), np.zeros(2), np.ones((2, 2)), np.zeros(2)])
    model.compile(training._optimizer("sgd", 0.1, 0.9, 1e-4, model, 5.0), loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, training.HeadSGD)
    assert (loaded.optimizer.head_multiplier, loaded.optimizer.head_variables) == (5.0, ["fc/kernel", "fc/bias"])


def test_dropout_acts_in_training_only_and_round_trips():
    keras.utils.set_random_seed(0)
    model = get_model("r3d_10", classes=3, dropout=0.5, input_shape=(4, 32, 32, 3), **TINY)
    plain = get_model("r3d_10", classes=3, input_shape=(4, 32, 32, 3), **TINY)
    plain.set_weights(model.get_weights())  # dropout has no weights: the same arrays
    x = np.random.default_rng(0).normal(size=(2, 4, 32, 32, 3)).astype("float32")
    out = keras.ops.convert_to_numpy
    np.testing.assert_allclose(out(model(x)), out(plain(x)), atol=1e-6)
    assert not np.allclose(out(model(x, training=True)), out(plain(x, training=True)))
    assert type(model).from_config(model.get_config()).get_layer("dropout").rate == 0.5
    for bad, match in (({"dropout": 1.0}, "rate in \\[0, 1\\)"), ({"dropout": 0.2, "include_top": False},
                                                                   "include_top=False")):
        with pytest.raises(ValueError, match=match):
            get_model("r3d_10", **TINY, **bad)


def test_control_errors_name_the_value(videos, start, tmp_path):
    with pytest.raises(ValueError, match="has the stages \\['conv1', 'conv2', 'conv3', 'conv4', 'conv5'\\]"):
        tune(videos, start, tmp_path / "a", freeze_until="conv6")
    with pytest.raises(ValueError, match="class_weight must be .* received 'inverse'"):
        tune(videos, start, tmp_path / "b", class_weight="inverse")
    with pytest.raises(ValueError, match="dropout=0.5 adds a layer .* already built"):
        tune(videos, start, tmp_path / "c", model=get_model("r3d_10", classes=2, **TINY), weights=None,
             dropout=0.5, model_kwargs=None)


def test_the_command_line_passes_the_controls(monkeypatch):
    received = {}
    monkeypatch.setattr(training, "finetune", lambda **kwargs: received.update(kwargs) or {"preset": None})
    assert cli.main(["finetune", "folder", "clips", "--freeze-until", "conv3", "--freeze-bn", "--dropout", "0.5",
                     "--label-smoothing", "0.1", "--class-weight", "balanced", "--balanced-sampling",
                     "--head-lr-multiplier", "10"]) == 0
    assert {k: received[k] for k in ("freeze_until", "freeze_bn", "dropout", "label_smoothing", "class_weight",
                                     "balanced_sampling", "head_lr_multiplier")} == dict(
        freeze_until="conv3", freeze_bn=True, dropout=0.5, label_smoothing=0.1, class_weight="balanced",
        balanced_sampling=True, head_lr_multiplier=10.0)
