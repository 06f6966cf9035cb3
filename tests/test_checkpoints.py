"""keras_r21d.presets.checkpoints against torch itself, hand-written files and hostile pickles.

Torch is the reference (torch.save writes the files, the tensors' own values are the
expected arrays); torchvision is never imported (importing it after TensorFlow crashes).
"""

import collections
import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile

import numpy as np
import py2_pickle
import pytest

sys.modules.setdefault("triton", None)  # not needed on the CPU
torch = pytest.importorskip("torch")

from keras_r21d.presets.checkpoints import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    detect_format,
    read_checkpoint,
)

SERIALIZATIONS = ["zip", "legacy"]


def torch_save(obj, path, serialization):
    torch.save(obj, path, _use_new_zipfile_serialization=serialization == "zip")
    return path


def replace_pickle(zip_bytes, pickled):
    """A torch.save zip archive with its data.pkl replaced; the storages stay as they are."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = pickled if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info, data)
    return out.getvalue()


def expected(tensor):
    tensor = tensor.detach()
    return tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


def assert_same(arrays, tensors):
    assert sorted(arrays) == sorted(tensors)
    for name, tensor in tensors.items():
        want = expected(tensor)
        got = arrays[name]
        assert isinstance(got, np.ndarray), name
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def state_dict():
    """Every dtype and every kind of view torch.save has to describe."""
    g = torch.Generator().manual_seed(0)
    big = torch.randn(60, generator=g)
    shared = torch.randn(4, 6, generator=g)
    bf = torch.randn(5, 3, generator=g).bfloat16()
    return collections.OrderedDict([
        ("conv.weight", torch.randn(4, 3, 1, 3, 3, generator=g)),
        ("conv.bias", torch.nn.Parameter(torch.randn(4, generator=g))),
        ("half", torch.randn(5, 2, generator=g).half()),
        ("bfloat16", bf),
        ("bfloat16_t", bf.t()),  # non-contiguous, shares bf's storage
        ("float64", torch.randn(3, generator=g, dtype=torch.float64)),
        ("int64", torch.randint(-2**40, 2**40, (6,), generator=g)),
        ("int32", torch.randint(-2**30, 2**30, (2, 2), generator=g, dtype=torch.int32)),
        ("int16", torch.randint(-999, 999, (3,), generator=g, dtype=torch.int16)),
        ("int8", torch.randint(-128, 127, (3,), generator=g, dtype=torch.int8)),
        ("uint8", torch.randint(0, 255, (3,), generator=g, dtype=torch.uint8)),
        ("bool", torch.tensor([True, False, True])),
        ("bn.num_batches_tracked", torch.tensor(7)),  # 0-d int64
        ("scalar", torch.tensor(2.5)),
        ("shared", shared),
        ("shared_t", shared.t()),  # transposed view of the same storage
        ("shared_row", shared[2]),  # storage offset
        ("shared_col", shared[1:, 3]),  # offset and stride
        ("slice", big[7:19].view(3, 4)),  # offset into a bigger storage
        ("every_third", big[2::3]),
        ("broadcast", torch.randn(3, 1, generator=g).expand(3, 4)),  # stride 0
        ("empty", torch.zeros(0, 3)),
    ])


# --- torch --------------------------------------------------------------------------


@pytest.mark.parametrize("serialization", SERIALIZATIONS)
def test_torch_state_dict_matches_torch(tmp_path, serialization):
    tensors = state_dict()
    path = torch_save(tensors, tmp_path / "w.pth", serialization)
    assert detect_format(path) == "torch"
    arrays = read_checkpoint(path)
    assert_same(arrays, tensors)
    assert arrays["half"].dtype == np.float16 and arrays["bfloat16"].dtype == np.float32
    assert arrays["bn.num_batches_tracked"].dtype == np.int64
    assert arrays["scalar"].shape == ()
    # Views of one storage come back as independent arrays.
    arrays["shared"][...] = 0
    np.testing.assert_array_equal(arrays["shared_t"], expected(tensors["shared_t"]))


@pytest.mark.parametrize("serialization", SERIALIZATIONS)
@pytest.mark.parametrize("wrap", ["state_dict", "model", "model_state", "nested", "module"])
def test_torch_wrappers_and_dataparallel_prefix(tmp_path, serialization, wrap):
    tensors = state_dict()
    prefixed = collections.OrderedDict((f"module.{k}", v) for k, v in tensors.items())
    obj = {
        "state_dict": {"state_dict": tensors, "epoch": 3, "optimizer": {"lr": [0.1]}},
        "model": {"model": prefixed, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
        "model_state": {"model_state": tensors, "arch": "r2plus1d_18"},
        "nested": {"state_dict": {"model": {"state_dict": prefixed}}},
        "module": prefixed,
    }[wrap]
    path = torch_save(obj, tmp_path / "w.pt", serialization)
    assert_same(read_checkpoint(path, format="torch"), tensors)


@pytest.mark.parametrize("serialization", SERIALIZATIONS)
def test_torch_untyped_storage_dtypes(tmp_path, serialization):
    # uint16/32/64 have no legacy storage class: torch pickles _rebuild_tensor_v3, an
    # UntypedStorage (bytes) and the dtype object.
    tensors = {
        "u16": torch.from_numpy(np.arange(12, dtype=np.uint16).reshape(3, 4)).t(),
        "u32": torch.from_numpy(np.array([2**31 + 5, 7], dtype=np.uint32)),
        "u64": torch.from_numpy(np.array([2**63 + 7], dtype=np.uint64))[0],
        "f32": torch.ones(2),
    }
    path = torch_save(tensors, tmp_path / "u.pth", serialization)
    assert_same(read_checkpoint(path), tensors)


@pytest.mark.parametrize("serialization", SERIALIZATIONS)
def test_torch_module_state_dict(tmp_path, serialization):
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv3d(3, 8, (1, 3, 3), padding=(0, 1, 1), bias=False), nn.BatchNorm3d(8), nn.ReLU(),
        nn.Sequential(nn.Conv3d(8, 8, (3, 1, 1), bias=False), nn.BatchNorm3d(8)),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 5),
    )
    net.train()
    net(torch.randn(2, 3, 4, 6, 6))  # moves the BN statistics and num_batches_tracked
    tensors = net.state_dict()
    path = torch_save(tensors, tmp_path / "net.pth", serialization)
    arrays = read_checkpoint(path)
    assert_same(arrays, tensors)
    assert arrays["1.num_batches_tracked"] == 1
    assert list(arrays) == list(tensors)  # keeps the checkpoint's order
    wrapped = torch_save(nn.DataParallel(net).state_dict(), tmp_path / "dp.pth", serialization)
    assert_same(read_checkpoint(wrapped), tensors)


# --- safetensors ----------------------------------------------------------------------

SAFETENSORS_TYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def write_safetensors(path, tensors, header_extra=None):
    """The format by hand: u64 header length, JSON header, concatenated raw bytes."""
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
        data = raw.numpy().astype(raw.numpy().dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": SAFETENSORS_TYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    header.update(header_extra or {})
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))
    return path


def test_safetensors_by_hand(tmp_path):
    tensors = {k: v.contiguous() for k, v in state_dict().items()}
    path = write_safetensors(tmp_path / "w.bin", tensors)
    assert detect_format(path) == "safetensors"
    arrays = read_checkpoint(path)
    assert_same(arrays, tensors)
    assert arrays["bfloat16"].dtype == np.float32


def test_safetensors_package(tmp_path):
    torch_api = pytest.importorskip("safetensors.torch")
    tensors = {k: v.detach().clone().contiguous() for k, v in state_dict().items()}  # no shared memory
    path = tmp_path / "w.safetensors"
    torch_api.save_file(tensors, str(path), metadata={"source": "test"})
    assert_same(read_checkpoint(path), tensors)


def test_safetensors_offsets_outside_the_file(tmp_path):
    tensors = {"a": torch.ones(4)}
    bad = {"b": {"dtype": "F32", "shape": [1000], "data_offsets": [16, 4016]}}
    path = write_safetensors(tmp_path / "bad.safetensors", tensors, bad)
    with pytest.raises(CheckpointFormatError, match="bad.safetensors"):
        read_checkpoint(path)


# --- caffe2 -------------------------------------------------------------------------


def blobs():
    rng = np.random.default_rng(0)
    return {
        "conv1_w": rng.standard_normal((8, 3, 1, 7, 7)).astype("<f4"),
        "conv1_spatbn_relu_s": rng.standard_normal(8).astype("<f4"),
        "conv1_spatbn_relu_rm": np.arange(8, dtype="<f8"),
        "last_out_L400_b": np.arange(-4, 4, dtype="<i4"),
        "mask": np.array([1, 0, 255], dtype="u1"),
        "scalar": np.array(3.5, dtype="<f4"),
        "latin1_bytes": np.array([[0xE9FF, 0x80], [0, 1]], dtype="<u2"),  # non-ASCII data
    }


def assert_blobs(arrays, want):
    assert sorted(arrays) == sorted(want)
    for name, array in want.items():
        assert type(arrays[name]) is np.ndarray and arrays[name].dtype == array.dtype, name
        np.testing.assert_array_equal(arrays[name], array, err_msg=name)


def test_caffe2_python2_pickle(tmp_path):
    data = py2_pickle.dumps({"blobs": {**blobs(), "model_iter": 123, "note": "trained"}})
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert {"SHORT_BINSTRING", "BINSTRING"} <= ops and "BINUNICODE" not in ops
    assert b"numpy.core.multiarray\n_reconstruct" in data
    path = tmp_path / "r2.5d_d18_l8.pkl"
    path.write_bytes(data)
    assert detect_format(path) == "caffe2"
    assert_blobs(read_checkpoint(path), blobs())


def test_caffe2_python2_bare_dict(tmp_path):
    path = tmp_path / "bare.pkl"
    path.write_bytes(py2_pickle.dumps({**blobs(), "model_iter": 5}))
    assert_blobs(read_checkpoint(path, format="caffe2"), blobs())


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_caffe2_python3_pickles(tmp_path, protocol):
    path = tmp_path / "py3.pkl"
    # bytes keys (decoded latin1), a blobs wrapper and non-array entries to skip.
    nested = {"blobs": {k.encode("latin1"): v for k, v in blobs().items()}, "it": 1}
    path.write_bytes(pickle.dumps(nested, protocol=protocol))
    assert detect_format(path) == "caffe2"
    assert_blobs(read_checkpoint(path), blobs())
    path.write_bytes(pickle.dumps({**blobs(), "model_iter": 7, "lr": 0.1}, protocol=protocol))
    assert_blobs(read_checkpoint(path), blobs())


# --- hostile pickles ----------------------------------------------------------------


class Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payload(which, marker):
    import builtins

    return [
        Payload(os.system, f"touch {marker}"),
        Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        Payload(subprocess.Popen, ["touch", str(marker)]),
    ][which]


def global_name(obj, protocol):
    """The global a pickle of `obj` names, as written (protocol 2 writes Python 2 names:
    `__builtin__.eval`, `commands.Popen`)."""
    data = pickle.dumps(obj, protocol=protocol)
    if protocol <= 2:
        arg = next(a for op, a, _ in pickletools.genops(data) if op.name == "GLOBAL")
        return arg.replace(" ", ".")
    strings = [a for op, a, _ in pickletools.genops(data) if op.name == "SHORT_BINUNICODE"]
    return ".".join(strings[:2])


@pytest.mark.parametrize(
    "container", ["torch-zip", "torch-legacy", "caffe2", "caffe2-protocol4", "py2-caffe2"])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_malicious_pickles_are_refused_before_running(tmp_path, container, which):
    marker = tmp_path / "pwned"
    evil_obj = payload(which, marker)
    name = global_name(evil_obj, 4 if container == "caffe2-protocol4" else 2)
    path = tmp_path / "evil.bin"
    if container.startswith("torch"):
        obj = {"state_dict": {"w": torch.ones(3), "evil": evil_obj}}
        torch_save(obj, path, "zip" if container == "torch-zip" else "legacy")
    elif container.startswith("caffe2"):
        obj = {"blobs": {"w": np.ones(3), "evil": evil_obj}}
        path.write_bytes(pickle.dumps(obj, protocol=4 if "4" in container else 2))
    else:  # the hostile global spliced into a genuine Python 2 pickle
        module, _, func = name.rpartition(".")
        clean = py2_pickle.dumps({"blobs": {"w": np.ones(3)}})
        evil = (pickle.GLOBAL + f"{module}\n{func}\n".encode() + pickle.MARK
                + pickle.SHORT_BINSTRING + bytes([2]) + b"id" + pickle.TUPLE + pickle.REDUCE)
        path.write_bytes(clean[:2] + evil + pickle.POP + clean[2:])
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert name in message and str(path) in message and "not loaded" in message
    assert "could run code" in message
    assert not marker.exists()


@pytest.mark.parametrize("which", [0, 1, 2])
def test_payloads_are_live(tmp_path, which):
    # Control: an unrestricted pickle.loads does run them, so the refusals above matter.
    marker = tmp_path / "pwned"
    result = pickle.loads(pickle.dumps(payload(which, marker), protocol=2))
    if isinstance(result, subprocess.Popen):
        result.wait(timeout=30)
    assert marker.exists()


def test_globals_of_another_format_are_refused(tmp_path):
    # A torch rebuild function inside a Caffe2 pickle, and NumPy's reconstructor in torch's.
    path = tmp_path / "mixed.pkl"
    path.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.")
    with pytest.raises(UnsafeCheckpointError, match="torch._utils._rebuild_tensor_v2"):
        read_checkpoint(path, format="caffe2")
    torch_path = torch_save({"a": np.ones(2)}, tmp_path / "numpy_inside.pth", "zip")
    with pytest.raises(UnsafeCheckpointError, match=r"numpy\._core\.multiarray\._reconstruct"):
        read_checkpoint(torch_path)


# --- damaged and unknown files ------------------------------------------------------


def damaged_files(tmp_path):
    torch_zip = torch_save(state_dict(), tmp_path / "full.pth", "zip").read_bytes()
    legacy = torch_save(state_dict(), tmp_path / "full_legacy.pth", "legacy").read_bytes()
    safetensors = write_safetensors(tmp_path / "full.st", state_dict()).read_bytes()
    caffe2 = py2_pickle.dumps({"blobs": blobs()})
    return {
        "truncated.pth": torch_zip[: len(torch_zip) // 2],
        "truncated_zip_tail.pth": torch_zip[:-30],
        "truncated_legacy.pth": legacy[:-100],
        "truncated_legacy_pickle.pth": legacy[:300],
        "truncated.safetensors": safetensors[:-50],
        "truncated_header.safetensors": safetensors[:40],
        "truncated.pkl": caffe2[:-500],
        "random.bin": b"\xff" + np.random.default_rng(0).bytes(4096),
        "empty.pth": b"",
    }


def test_damaged_and_unknown_files(tmp_path):
    for name, data in damaged_files(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointFormatError) as info:
            read_checkpoint(path)
        message = str(info.value)
        assert str(path) in message and "supported" in message, message


def test_wrong_format_argument(tmp_path):
    path = torch_save({"a": torch.ones(2)}, tmp_path / "w.pth", "zip")
    with pytest.raises(CheckpointFormatError, match="w.pth"):
        read_checkpoint(path, format="safetensors")
    with pytest.raises(CheckpointFormatError, match="w.pth"):
        read_checkpoint(path, format="caffe2")
    with pytest.raises(ValueError, match="expected one of"):
        read_checkpoint(path, format="onnx")
    with pytest.raises(CheckpointFormatError, match="missing.pth"):
        detect_format(tmp_path / "missing.pth")


def test_detect_format_reads_content_not_extension(tmp_path):
    files = {
        "torch_zip.pkl": torch_save({"a": torch.ones(1)}, tmp_path / "a", "zip").read_bytes(),
        "torch_legacy.safetensors":
            torch_save({"a": torch.ones(1)}, tmp_path / "b", "legacy").read_bytes(),
        "st.pth": write_safetensors(tmp_path / "c", {"a": torch.ones(1)}).read_bytes(),
        "caffe2.pth": py2_pickle.dumps({"blobs": {"a": np.ones(1, "<f4")}}),
    }
    want = {"torch_zip.pkl": "torch", "torch_legacy.safetensors": "torch",
            "st.pth": "safetensors", "caffe2.pth": "caffe2"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert detect_format(tmp_path / name) == want[name], name
        np.testing.assert_array_equal(read_checkpoint(tmp_path / name)["a"], [1.0])


@pytest.mark.parametrize("head", [b"\x80\x02\x8a\x01\x05.", b"\x80\x02\x8a\x00.",
                                  b"\x80\x02\x8a\x7f"])
def test_detect_format_on_other_long1_pickles(tmp_path, head):
    # A pickle opening with a LONG1 other than torch's magic number is not torch's legacy file.
    path = tmp_path / "long1.pkl"
    path.write_bytes(head)
    assert detect_format(path) == "caffe2"


def test_reader_never_imports_torch(tmp_path):
    """The module alone (no keras_r21d package, so no Keras) reads every format torch-free."""
    paths = [torch_save(state_dict(), tmp_path / "z.pth", "zip"),
             torch_save(state_dict(), tmp_path / "l.pth", "legacy"),
             write_safetensors(tmp_path / "s.safetensors", {"a": torch.ones(2)})]
    (tmp_path / "c.pkl").write_bytes(py2_pickle.dumps({"blobs": blobs()}))
    paths.append(tmp_path / "c.pkl")
    module = os.path.join(os.path.dirname(__file__), "..", "keras_r21d", "presets", "checkpoints.py")
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('ckpt', {module!r})\n"
        "ckpt = importlib.util.module_from_spec(spec); spec.loader.exec_module(ckpt)\n"
        f"for p in {[str(p) for p in paths]!r}: assert ckpt.read_checkpoint(p), p\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
