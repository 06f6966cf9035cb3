"""tools/bench_data.py: the pipeline against the training step it feeds, on the real videos."""

import json

import pytest
from conftest import SHARED_DATA, load_tool

bench_data = load_tool("bench_data")


def test_bench_data_prints_its_table(tmp_path, capsys):
    videos = SHARED_DATA / "videos"
    if not videos.is_dir():
        pytest.skip(f"real videos not found at {videos}")
    out = tmp_path / "bench.json"
    code = bench_data.main([str(videos), "--model", "r3d_10", "--frames", "4", "--batch-size", "2",
                            "--batches", "2", "--steps", "1", "--json", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "tf.data pipeline alone" in stdout and "Pipeline / training demand" in stdout
    result = json.loads(out.read_text())
    assert result["pipeline_clips_per_s"] > 0 and result["train_clips_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["pipeline_clips_per_s"] / result["train_clips_per_s"])


def test_a_missing_video_folder_is_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    assert bench_data.main([str(missing)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(missing) in error and "does not exist" in error, error


@pytest.mark.parametrize("tool, argv, option", [
    ("bench_data", ["--batch-size", "0"], "--batch-size"),
    ("bench", ["--batch-sizes", "1", "0"], "--batch-sizes"),
])
def test_out_of_range_numbers_are_refused_at_parse_time(tool, argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        (bench_data.main if tool == "bench_data" else load_tool("bench").parse_args)(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert option in error and "0" in error and ">= 1" in error, error
