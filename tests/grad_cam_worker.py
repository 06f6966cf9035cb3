"""Grad-CAM on the Keras backend named by KERAS_BACKEND (set before this process starts):
`python grad_cam_worker.py DIR NAME...` loads DIR/NAME.weights.h5 and DIR/input.npy and saves
the conv5 map of class 3 and the conv3 map of the top class as DIR/NAME.<backend>.npz."""

import os
import sys

import numpy as np

if os.environ.get("KERAS_BACKEND") == "torch":
    sys.modules["triton"] = None  # not needed on the CPU; keeps torch's import light

import keras  # noqa: E402

import keras_r21d  # noqa: E402
from keras_r21d.explain import grad_cam  # noqa: E402


def main(directory, names):
    x = np.load(os.path.join(directory, "input.npy"))
    for name in names:
        model = keras_r21d.get_model(name, widths=(4, 4, 8, 8), classes=5, frames=x.shape[0])
        model.load_weights(os.path.join(directory, f"{name}.weights.h5"))
        conv5, conv3 = grad_cam(model, x, "conv5", class_index=3), grad_cam(model, x, "conv3")
        np.savez(os.path.join(directory, f"{name}.{keras.backend.backend()}.npz"), conv5=conv5["map"],
                 conv3=conv3["map"], top=conv3["class_index"], probability=conv5["probability"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
