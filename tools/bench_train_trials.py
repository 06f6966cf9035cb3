"""Training-step trials on the CPU: what else could make keras-r21d's training step faster.

    python tools/bench_train_trials.py [--batch 8] [--frames 8] [--size 112] [--steps 4] [--trials NAME ...]

R(2+1)D-18 (the registry's widths), SGD momentum 0.9, cross-entropy, `train_on_batch`
on one random batch; each trial in its own process (TensorFlow's threading and oneDNN
are fixed at start-up). The figure is the best of `--steps` steps after a first one
(tracing). torchvision's step is timed by `python tools/bench.py`.

Trials: the default (oneDNN on, as importing keras_r21d sets it); oneDNN off (TF's own
default on CPUs without AVX512_VNNI/BF16/AMX); batch norm as TensorFlow's fused
FusedBatchNormV3 kernel instead of Keras's composite ops; one inter-op thread.
"""

import argparse
import subprocess
import sys

TRIALS = {
    "default (oneDNN on)": [],
    "oneDNN off": ["onednn_off"],
    "fused batch norm (FusedBatchNormV3)": ["fused_bn"],
    "inter-op threads 1": ["inter1"],
}

WORKER = r"""
import os, sys, time
options, batch, frames, size, steps = sys.argv[1].split(","), *map(int, sys.argv[2:6])
if "onednn_off" in options:
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
import keras_r21d
import keras
import numpy as np
import tensorflow as tf
from keras_r21d.machine import onednn_enabled

if "inter1" in options:
    tf.config.threading.set_inter_op_parallelism_threads(1)


class FusedBatchNorm(keras.layers.BatchNormalization):
    # Training: TF's one-kernel batch norm over N, T, H, W; inference as Keras does it.
    def call(self, inputs, training=None, mask=None):
        if not training:
            return super().call(inputs, training=training)
        empty = tf.constant([], tf.float32)
        y, mean, var, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=self.gamma, offset=self.beta, mean=empty, variance=empty, epsilon=self.epsilon,
            exponential_avg_factor=1.0, data_format="NDHWC", is_training=True)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + var * (1 - self.momentum))
        return y


if "fused_bn" in options:
    import keras_r21d.models.layers

    keras_r21d.models.layers.layers.BatchNormalization = FusedBatchNorm
model = keras_r21d.get_model("r2plus1d_18", input_shape=(frames, size, size, 3), classes=400)
model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
x = np.random.default_rng(0).normal(size=(batch, frames, size, size, 3)).astype("float32")
y = np.arange(batch) % 400
model.train_on_batch(x, y)
best = float("inf")
for _ in range(steps):
    start = time.perf_counter()
    model.train_on_batch(x, y)
    best = min(best, time.perf_counter() - start)
print("RESULT", best, onednn_enabled())
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--trials", nargs="+", choices=list(TRIALS), default=list(TRIALS))
    args = parser.parse_args()
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from keras_r21d.machine import describe_cpu

    print(f"{describe_cpu()}. R(2+1)D-18 training step, {args.frames}x{args.size}x{args.size}, "
          f"batch {args.batch}, best of {args.steps} steps.")
    print("| trial | clips/s | s/step | vs default | oneDNN |")
    print("|---|---:|---:|---:|---|")
    first = None
    for name in args.trials:
        run = subprocess.run([sys.executable, "-c", WORKER, ",".join(TRIALS[name]) or "-", str(args.batch),
                              str(args.frames), str(args.size), str(args.steps)],
                             check=False, capture_output=True, text=True)
        line = [w for w in run.stdout.splitlines() if w.startswith("RESULT")]
        if run.returncode or not line:
            print(f"| {name} | failed: {run.stderr.strip().splitlines()[-1][:100] if run.stderr.strip() else '?'} |")
            continue
        _, seconds, onednn = line[0].split()
        seconds = float(seconds)
        first = first or seconds
        print(f"| {name} | {args.batch / seconds:.2f} | {seconds:.2f} | {first / seconds:.2f}x | {onednn} |",
              flush=True)


if __name__ == "__main__":
    main()
