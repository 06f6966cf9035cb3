"""Two processes on 127.0.0.1 fine-tune together (JAX backend, gloo collectives)."""

import json
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
from media import random_videos

WORKER = """
import json, pathlib, pickle, sys
import numpy as np
import keras
from keras_r21d.data import video
from keras_r21d.training import finetune

seen = set()
read_clip = video.read_clip
def recording(path, *args, **kwargs):
    seen.add(str(path))
    return read_clip(path, *args, **kwargs)
video.read_clip = recording

videos = pickle.loads(pathlib.Path(sys.argv[1]).read_bytes())
out = pathlib.Path(sys.argv[2])
result = finetune(train_videos=videos, labels=["a", "b"], model="r2plus1d_10", weights=None, frames=4,
                  batch_size=2, epochs=2, output_dir=out / "run", validate=False, distributed=True,
                  model_kwargs=dict(widths=(4, 4, 8, 8), stem_midplanes=3), progress=False,
                  resize=None, crop=32)
rank = keras.distribution.distribution().device_mesh is not None and __import__("jax").process_index()
np.savez(out / f"weights{rank}.npz", *[keras.ops.convert_to_numpy(w) for w in result["model"].weights])
(out / f"seen{rank}.json").write_text(json.dumps(sorted(seen)))
print("done", rank, int(keras.ops.convert_to_numpy(result["model"].optimizer.iterations)))
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_model_on_their_own_shards(tmp_path):
    pytest.importorskip("jax")
    videos = [(str(path), label) for path, label in random_videos(tmp_path, 8, classes=2)]
    listing = tmp_path / "videos.pkl"
    listing.write_bytes(pickle.dumps(videos))
    port = free_port()
    processes = []
    for rank in range(2):
        env = dict(os.environ, KERAS_BACKEND="jax", KERAS_R21D_COORDINATOR=f"127.0.0.1:{port}",
                   KERAS_R21D_NUM_PROCESSES="2", KERAS_R21D_PROCESS_ID=str(rank), CUDA_VISIBLE_DEVICES="",
                   JAX_PLATFORMS="cpu")
        processes.append(subprocess.Popen([sys.executable, "-c", WORKER, str(listing), str(tmp_path)],
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in processes]
    for p, (out, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    # 8 videos, 2 processes x 2 clips per step: 2 steps per epoch, 2 epochs.
    assert [out.split()[-1] for out, _ in outputs] == ["4", "4"]
    first, second = (np.load(tmp_path / f"weights{r}.npz") for r in range(2))
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])
    seen = [set(json.loads((tmp_path / f"seen{r}.json").read_text())) for r in range(2)]
    assert not seen[0] & seen[1]  # each process decoded only its own shard
    assert seen[0] | seen[1] == {path for path, _ in videos}
    assert (tmp_path / "run" / "preset" / "model.weights.h5").is_file()  # written by process 0


LOCAL = """
import pathlib, pickle, sys
import jax, keras
from keras_r21d.training import finetune
assert len(jax.devices()) == 2
videos = pickle.loads(pathlib.Path(sys.argv[1]).read_bytes())
result = finetune(train_videos=videos, labels=["a", "b"], model="r2plus1d_10", weights=None, frames=4,
                  batch_size=4, epochs=1, output_dir=sys.argv[2], validate=False, distributed=True,
                  model_kwargs=dict(widths=(4, 4, 8, 8), stem_midplanes=3), progress=False,
                  resize=None, crop=32)
print("mesh", keras.distribution.distribution().device_mesh.shape,
      "steps", int(keras.ops.convert_to_numpy(result["model"].optimizer.iterations)))
"""


def test_one_process_over_two_local_devices(tmp_path):
    pytest.importorskip("jax")
    videos = [(str(path), label) for path, label in random_videos(tmp_path, 8, frames=8, classes=2, seed=1)]
    listing = tmp_path / "videos.pkl"
    listing.write_bytes(pickle.dumps(videos))
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    run = subprocess.run([sys.executable, "-c", LOCAL, str(listing), str(tmp_path / "run")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "mesh (2,) steps 2" in run.stdout  # DataParallel over both devices; 8 videos, batch 4
