"""Benchmark: the tf.data clip pipeline against the training speed of R(2+1)D-18.

    python tools/bench_data.py [VIDEO_DIR] [--batch-size 4] [--frames 16] [--json OUT]

Decodes and augments the videos of VIDEO_DIR (default ../shared/data/videos) and times a
training step of the network at the same batch size, in one run; prints a table. Same
as `keras-r21d bench-data`.
"""

import sys

from keras_r21d.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench-data", *sys.argv[1:]]))
