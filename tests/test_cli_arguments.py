"""Numbers on the command line are checked when they are parsed: a value out of range is
refused with the option, the value and the allowed range, before any work starts."""

import pytest

from keras_r21d import cli

# (command line, option named in the error, range stated in the error)
REFUSED = [
    (["finetune", "ucf101", "r", "--batch-size", "0"], "--batch-size", ">= 1"),
    (["finetune", "ucf101", "r", "--epochs", "0"], "--epochs", ">= 1"),
    (["finetune", "ucf101", "r", "--lr", "nan"], "--lr", "> 0"),
    (["finetune", "ucf101", "r", "--lr", "0"], "--lr", "> 0"),
    (["finetune", "ucf101", "r", "--lr=-1e-3"], "--lr", "> 0"),  # argparse reads "-1e-3" as an option
    (["finetune", "ucf101", "r", "--warmup-epochs", "-3"], "--warmup-epochs", ">= 0"),
    (["finetune", "ucf101", "r", "--warmup-epochs", "inf"], "--warmup-epochs", ">= 0"),
    (["finetune", "ucf101", "r", "--checkpoint-every", "0"], "--checkpoint-every", ">= 1"),
    (["finetune", "ucf101", "r", "--momentum", "1"], "--momentum", "< 1"),
    (["finetune", "ucf101", "r", "--long-epochs", "-1"], "--long-epochs", ">= 0"),
    (["finetune", "ucf101", "r", "--eval-clips", "-2"], "--eval-clips", ">= 0"),
    (["finetune", "ucf101", "r", "--frames", "2.5"], "--frames", "not an integer"),
    (["export", "r2plus1d_18", "--size", "0"], "--size", ">= 1"),
    (["export", "r2plus1d_18", "--batch-size", "0"], "--batch-size", ">= 1"),
    (["predict", "v.mp4", "--clips", "0"], "--clips", ">= 1"),
    (["predict", "v.mp4", "--clips", "-1"], "--clips", ">= 1"),
    (["evaluate", "ucf101", "r", "--stride", "0"], "--stride", ">= 1"),
    (["demo", "--seeds", "0"], "--seeds", ">= 1"),
]


@pytest.mark.parametrize("argv, option, allowed", REFUSED, ids=[" ".join(a) for a, _, _ in REFUSED])
def test_out_of_range_numbers_are_refused_at_parse_time(argv, option, allowed, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    value = argv[-1].split("=")[-1]
    assert option in error and value in error and allowed in error, error


def test_edge_values_inside_the_ranges_are_accepted():
    args = cli.build_parser().parse_args(
        ["finetune", "ucf101", "r", "--batch-size", "1", "--epochs", "1", "--lr", "1e-9", "--momentum", "0",
         "--warmup-epochs", "0", "--weight-decay", "0", "--long-epochs", "0", "--eval-clips", "0", "--seed", "0"])
    assert (args.batch_size, args.epochs, args.lr, args.momentum, args.warmup_epochs, args.long_epochs,
            args.eval_clips) == (1, 1, 1e-9, 0.0, 0.0, 0, 0)
