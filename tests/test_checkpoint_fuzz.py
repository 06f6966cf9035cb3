"""Fuzzing the checkpoint reader: valid files of every format, mutated (bits flipped, cut
short, bytes inserted, deleted or overwritten), must load or fail with
CheckpointFormatError / UnsafeCheckpointError only, each within seconds.

Hypothesis runs derandomized (the same examples on every run, so CI is reproducible) and
keeps no example database. Each read runs under a timer and an address-space cap, so a
hang or a blowup fails the test instead of stalling or swapping the machine.
"""

import contextlib
import pickle
import resource
import signal
import sys
import threading
import zipfile

import numpy as np
import py2_pickle
import pytest

hypothesis = pytest.importorskip("hypothesis")
sys.modules.setdefault("triton", None)  # not needed on the CPU
torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_checkpoints import expected, replace_pickle, torch_save, write_safetensors

from keras_r21d.presets.checkpoints import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    detect_format,
    read_checkpoint,
)

EXAMPLES = 400  # per target: about 20 s for the seven targets on two slow cores
SECONDS_PER_READ = 10


def tensors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 3, generator=g)
    return {
        "w": base, "w_t": base.t(), "row": base[1],  # shared storage, views, an offset
        "bf16": torch.randn(3, generator=g).bfloat16(), "i64": torch.arange(3),
        "count": torch.tensor(2), "u16": torch.tensor([1, 2], dtype=torch.uint16),
    }


def arrays():
    rng = np.random.default_rng(0)
    return {"conv_w": rng.standard_normal((2, 3, 1, 2)).astype("<f4"),
            "rm": np.arange(3, dtype="<f8"), "it": np.array(5, dtype="<i8"),
            "f": np.asfortranarray(np.arange(6, dtype=">i2").reshape(2, 3))}


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """`{name: (seed bytes, format, bytes -> file bytes)}`: what gets mutated, and how the
    mutated bytes become a file (the zip-pickle target mutates data.pkl inside a valid zip,
    so that its CRC does not stop the mutation before the unpickler sees it)."""
    folder = tmp_path_factory.mktemp("seeds")
    torch_zip = torch_save(tensors(), folder / "z.pth", "zip").read_bytes()
    with zipfile.ZipFile(folder / "z.pth") as archive:
        data_pkl = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    contiguous = {k: v.contiguous() for k, v in tensors().items() if k != "u16"}
    same = lambda data: data
    return {
        "torch-zip": (torch_zip, "torch", same),
        "torch-zip-pickle": (data_pkl, "torch", lambda data: replace_pickle(torch_zip, data)),
        "torch-legacy": (torch_save(tensors(), folder / "l.pth", "legacy").read_bytes(), "torch",
                         same),
        "safetensors": (write_safetensors(folder / "s.st", contiguous).read_bytes(),
                        "safetensors", same),
        "caffe2-python2": (py2_pickle.dumps({"blobs": arrays(), "it": 3}), "caffe2", same),
        "caffe2-protocol-2": (pickle.dumps({"blobs": arrays()}, protocol=2), "caffe2", same),
        "caffe2-protocol-5": (pickle.dumps(arrays(), protocol=5), "caffe2", same),
    }


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 64)),
    st.tuples(st.just("overwrite"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)),
)


def mutate(data, mutations):
    data = bytearray(data)
    for op, at, arg in ((m[0], m[1], m[2] if len(m) > 2 else None) for m in mutations):
        at %= len(data) + 1
        if op == "flip" and at < len(data):
            data[at] ^= 1 << arg
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = arg
        elif op == "delete":
            del data[at:at + arg]
        elif op == "overwrite":
            data[at:at + len(arg)] = arg
    return bytes(data)


@contextlib.contextmanager
def bounded(seconds):
    """Raises TimeoutError in a read that takes over `seconds`, MemoryError in one that
    maps over 2 GiB more than the process has now."""
    def timeout(signum, frame):
        raise TimeoutError(f"a read took over {seconds} s")

    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) for line in status if line.startswith("VmSize:")) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm + (2 << 30) if hard == resource.RLIM_INFINITY else min(vm + (2 << 30), hard)
    main = threading.current_thread() is threading.main_thread()  # signals need the main thread
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    if main:
        handler = signal.signal(signal.SIGALRM, timeout)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, handler)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("target", ["torch-zip", "torch-zip-pickle", "torch-legacy",
                                    "safetensors", "caffe2-python2", "caffe2-protocol-2",
                                    "caffe2-protocol-5"])
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_checkpoints_fail_cleanly(targets, tmp_path_factory, target, mutations):
    seed, file_format, to_file = targets[target]
    path = tmp_path_factory.getbasetemp() / f"fuzz-{target}.bin"
    path.write_bytes(to_file(mutate(seed, mutations)))
    with bounded(SECONDS_PER_READ):
        try:
            detect_format(path)
        except CheckpointFormatError:
            pass
        try:
            result = read_checkpoint(path, format=file_format)
        except (CheckpointFormatError, UnsafeCheckpointError) as error:
            assert str(path) in str(error) and len(str(error)) < 2000, str(error)
            return
    assert isinstance(result, dict)
    assert all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in result.items())


def test_seeds_read_as_torch_and_numpy_have_them(targets, tmp_path):
    # Unmutated, every seed reads: the fuzzing starts from working files.
    for name, (seed, file_format, to_file) in targets.items():
        path = tmp_path / name
        path.write_bytes(to_file(seed))
        got = read_checkpoint(path, format=file_format)
        want = ({k: expected(v) for k, v in tensors().items()} if file_format != "caffe2"
                else arrays())
        if file_format == "safetensors":
            del want["u16"]
        assert sorted(got) == sorted(want), name
        for key, array in want.items():
            np.testing.assert_array_equal(got[key], array, err_msg=f"{name}: {key}")
