import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# What `import keras_r21d` does (keras_r21d/machine.py), for test modules that import Keras
# first; importing the package here would load TensorFlow before torchvision, which crashes.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# Fewer glibc malloc arenas: a test worker runs hundreds of TensorFlow tests, and freed memory
# spread over many arenas stays resident (a worker reached 19.4 GB and was killed for memory on
# a 24 GB machine). Inherited by the xdist workers and the tests' subprocesses.
os.environ.setdefault("MALLOC_ARENA_MAX", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
TOOLS = pathlib.Path(__file__).resolve().parents[1] / "tools"


def load_tool(name):
    """The script tools/<name>.py as a module (tools/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomize_batchnorm(model, seed=0):
    """Gives every BN random gamma, beta and moving statistics, as a trained net has."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0.0, 0.1, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0.0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="module")
def _give_memory_back():
    """After each test module: collect its models and hand freed heap memory back to the
    system (glibc keeps it otherwise), so a worker's memory does not grow module after module."""
    yield
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
