"""The offline demo makes the paper's point: only networks that model time tell a motion
from the same motion played backwards."""

import numpy as np

from keras_r21d import cli
from keras_r21d.demo import order_accuracy, run_demo


def test_demo_temporal_network_learns_order_and_f_r2d_cannot(tmp_path, capsys):
    # One seed each, to keep the suite short (`keras-r21d demo` runs two).
    rows = {r["name"]: r for r in run_demo(tmp_path, networks=("fr2d_18", "r2plus1d_18"), seeds=1)}
    table = capsys.readouterr().out
    assert "| f-R2D-18" in table and "| R(2+1)D-18" in table and "order (pairs)" in table
    fr2d, r21d = rows["fr2d_18"], rows["r2plus1d_18"]
    assert len(fr2d["order@1"]) == len(r21d["order@1"]) == 1 and fr2d["seeds"] == [0]
    np.testing.assert_allclose(r21d["order@1_mean"], np.mean(r21d["order@1"]))
    np.testing.assert_allclose(r21d["order@1_std"], np.std(r21d["order@1"]))
    # Chance within an order pair is 50%: f-R2D sees the frames of a clip as a set, and each class
    # of a pair is the other played backwards. The temporal network tells them apart in every run.
    assert 0.25 <= fr2d["order@1_mean"] <= 0.75, fr2d
    assert min(r21d["order@1"]) >= 0.8, r21d
    assert min(r21d["video@1"]) >= 2 / 6, r21d  # twice chance over 6 classes
    # The runs went through the real fine-tuning code: presets and metrics on disk.
    assert (tmp_path / "runs" / "r2plus1d_18_seed0" / "preset" / "model.weights.h5").is_file()
    assert (tmp_path / "runs" / "fr2d_18_seed0" / "metrics.json").is_file()


def test_order_accuracy_counts_only_within_pair_predictions():
    # classes 0/1 form a pair, 2 is another class: rows are true labels, columns predictions
    confusion = np.array([[5, 3, 2],
                          [1, 7, 0],
                          [4, 4, 9]])
    # right within the pair: 5 + 7; predicted inside the pair: 5 + 3 + 1 + 7 (class 2's videos do not count)
    assert order_accuracy(confusion, [(0, 1)]) == 12 / 16


def test_demo_command_line_parses():
    parser = cli.build_parser()
    args = parser.parse_args(["demo", "--quick", "-o", "out"])
    assert args.quick and args.output == "out" and args.run is not None
