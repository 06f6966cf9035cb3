"""The library never imports torch: every module of keras_r21d imported, a network built
and run, in a fresh interpreter, and torch is still not loaded. (The import direction
itself is checked by `lint-imports`, part of the README's test command.)"""

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import numpy as np
import keras_r21d
for module in pkgutil.walk_packages(keras_r21d.__path__, "keras_r21d."):
    importlib.import_module(module.name)
model = keras_r21d.get_model("r2plus1d_18", classes=3, input_shape=(4, 32, 32, 3), widths=(4, 4, 8, 8))
model(np.zeros((1, 4, 32, 32, 3), "float32"))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print("torch modules:", loaded)
sys.exit(1 if loaded else 0)
"""


def test_keras_r21d_never_imports_torch():
    run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "torch modules: []" in run.stdout
