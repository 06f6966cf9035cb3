"""Runs saved networks on the Keras backend named by KERAS_BACKEND (set before this
process starts) and saves their outputs: `python backend_worker.py DIR NAME...`."""

import os
import sys

import numpy as np

if os.environ.get("KERAS_BACKEND") == "torch":
    sys.modules["triton"] = None  # not needed on the CPU; keeps torch's import light

import keras  # noqa: E402

import keras_r21d  # noqa: E402


def main(directory, names):
    x = np.load(os.path.join(directory, "input.npy"))
    for name in names:
        frames = x.shape[1]
        model = keras_r21d.get_model(name, input_shape=x.shape[1:], classifier_activation=None,
                                     frames=frames)
        model.load_weights(os.path.join(directory, f"{name}.weights.h5"))
        out = keras.ops.convert_to_numpy(model(x, training=False))
        np.save(os.path.join(directory, f"{name}.{keras.backend.backend()}.npy"), out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
