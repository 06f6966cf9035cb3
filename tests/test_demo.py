"""The offline demo makes the paper's point: only networks that model time tell a motion
from the same motion played backwards."""

from keras_r21d import cli
from keras_r21d.demo import run_demo


def test_demo_temporal_network_learns_order_and_f_r2d_cannot(tmp_path, capsys):
    rows = {r["name"]: r for r in run_demo(tmp_path, networks=("fr2d_18", "r2plus1d_18"))}
    table = capsys.readouterr().out
    assert "| f-R2D-18" in table and "| R(2+1)D-18" in table and "order (pairs)" in table
    # Chance within an order pair is 50%; f-R2D's input distribution is the same for both classes.
    assert 0.3 <= rows["fr2d_18"]["order@1"] <= 0.7, rows["fr2d_18"]
    assert rows["r2plus1d_18"]["order@1"] >= 0.8, rows["r2plus1d_18"]
    assert rows["r2plus1d_18"]["video@1"] >= 0.5  # chance over 6 classes is 1/6
    # The runs went through the real fine-tuning code: presets and metrics on disk.
    assert (tmp_path / "runs" / "r2plus1d_18" / "preset" / "model.weights.h5").is_file()
    assert (tmp_path / "runs" / "fr2d_18" / "metrics.json").is_file()


def test_demo_command_line_parses():
    parser = cli.build_parser()
    args = parser.parse_args(["demo", "--quick", "-o", "out"])
    assert args.quick and args.output == "out" and args.run is not None
