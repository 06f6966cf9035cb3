"""Benchmark: the networks on the CPU against torchvision's, as a fraction of the machine's peak.

    python tools/bench.py [--models r2plus1d_18 r3d_18 mc3_18] [--batch-sizes 1 8] [--rounds 3]
                          [--frames 16] [--size 112] [--modes ...] [--no-torch] [--no-train]
                          [--quick] [--json OUT]

Measures the machine (CPU, ISA flags, float32/bfloat16 matmul peak), times every
inference mode of keras-r21d and torchvision with the same weights in alternating
rounds, and one training step of each; prints a table with the keras/torch ratios and
the targets of issue 10. Same as `keras-r21d bench`.
"""

import sys

from keras_r21d.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
