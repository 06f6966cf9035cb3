"""Hostile checkpoints (issue 16): each ends fast, in bounded memory, with one clear error
naming the file, and none can change how later files are read.

Hangs and blowups run in a subprocess (the reader module alone: no Keras, no torch) under a
wall-clock timeout and an address-space cap, reporting their time and peak memory growth.
Expected values come from torch, NumPy and the safetensors package, never from the reader.
"""

import collections
import functools
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import py2_pickle
import pytest

sys.modules.setdefault("triton", None)  # not needed on the CPU
torch = pytest.importorskip("torch")

from test_checkpoints import blobs, replace_pickle, state_dict, torch_save

from keras_r21d.presets.checkpoints import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    read_checkpoint,
)

MODULE = os.path.join(os.path.dirname(__file__), "..", "keras_r21d", "presets", "checkpoints.py")
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
ONE_FLOAT = np.float32(1.5).tobytes()


# --- torch files by hand --------------------------------------------------------------


class Persistent:
    """Pickles as a persistent id: torch.save's reference to a storage, or anything else."""

    def __init__(self, pid):
        self.pid = pid


def storage(key="0", kind="FloatStorage", numel=1):
    return Persistent(("storage", getattr(torch, kind), key, "cpu", numel))


class Tensor:
    """Pickles the way torch.save pickles a tensor, with any shape, stride and offset."""

    def __init__(self, shape, stride, offset=0, source=None):
        self.args = (source or storage(), offset, shape, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class TorchPickler(pickle.Pickler):
    legacy = False  # the legacy format's storage ids end with a view_metadata field

    def persistent_id(self, obj):
        if not isinstance(obj, Persistent):
            return None
        return obj.pid + (None,) if self.legacy and isinstance(obj.pid, tuple) else obj.pid


def torch_pickle(obj, legacy=False):
    out = io.BytesIO()
    pickler = TorchPickler(out, protocol=2)
    pickler.legacy = legacy
    pickler.dump(obj)
    return out.getvalue()


def keyed_by(key):
    """A pickle of `{key: 1}` written without hashing `key` (Python would, to build it)."""
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.dumps(key, protocol=2)[2:-1] \
        + pickle.BININT1 + b"\x01" + pickle.SETITEM + pickle.STOP


def write_torch(path, pickled, storages=None, serialization="zip"):
    """A torch.save-format file: the object pickle, then float32 storages {key: bytes}."""
    storages = {"0": ONE_FLOAT} if storages is None else storages
    if serialization == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", pickled)
            archive.writestr("archive/byteorder", "little")
            archive.writestr("archive/version", "3\n")
            for key, raw in storages.items():
                archive.writestr(f"archive/data/{key}", raw)
        return path
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, sys_info)]
    parts += [pickled, pickle.dumps(list(storages), protocol=2)]
    for raw in storages.values():
        parts += [struct.pack("<q", len(raw) // 4), raw]  # element count, then the elements
    path.write_bytes(b"".join(parts))
    return path


def raw_zip(entries):
    """A zip archive written field by field from `(name, payload, method, crc, size)`, so
    that its headers can claim any uncompressed size."""
    local, central = b"", b""
    for name, payload, method, crc, size in entries:
        name = name.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc,
                               len(payload), size, len(name), 0, 0, 0, 0, 0, len(local)) + name
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(payload),
                             size, len(name), 0) + name + payload
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central),
                      len(local), 0)
    return local + central + end


@functools.cache
def zeros_deflated(nbytes):
    """Raw deflate of `nbytes` zeros, as zip stores it: about 1000 times smaller."""
    compressor, chunk = zlib.compressobj(9, zlib.DEFLATED, -15), bytes(1 << 20)
    return b"".join(compressor.compress(chunk) for _ in range(nbytes >> 20)) + compressor.flush()


def zip_bomb(path, declared):
    """data/0 inflates to 64 MiB; its headers say `declared` bytes (the CRC agrees)."""
    pickled = torch_pickle({"w": Tensor((1,), (1,))})
    crc = zlib.crc32(bytes(declared))
    path.write_bytes(raw_zip([
        ("archive/data.pkl", pickled, 0, zlib.crc32(pickled), len(pickled)),
        ("archive/data/0", zeros_deflated(64 << 20), zipfile.ZIP_DEFLATED, crc, declared),
    ]))
    return path


def read_both_ways(tmp_path, obj):
    """`obj` saved as a zip and a legacy torch file over one storage of 0..5: yields our
    reading and torch.load's of each, after checking every tensor of the two is equal."""
    raw = np.arange(6, dtype="<f4").tobytes()
    for serialization in ("zip", "legacy"):
        pickled = torch_pickle(obj, legacy=serialization == "legacy")
        path = write_torch(tmp_path / f"{serialization}.pth", pickled, {"0": raw}, serialization)
        want = torch.load(path, weights_only=True)
        got = read_checkpoint(path)
        for name, tensor in want.items():
            np.testing.assert_array_equal(got[name], tensor.numpy(), err_msg=name)
        yield got, want


def test_hand_written_torch_files_match_torch(tmp_path):
    # The writers above against torch.load itself: broadcast, offset and transposed views.
    six = storage(numel=6)
    obj = {"broadcast": Tensor((3, 4), (1, 0), source=six),
           "offset": Tensor((2,), (2,), offset=1, source=six), "t": Tensor((2, 3), (1, 2), source=six)}
    for got, want in read_both_ways(tmp_path, obj):
        assert sorted(got) == sorted(want)
    bomb = zip_bomb(tmp_path / "bomb.pth", 64 << 20)
    with zipfile.ZipFile(bomb) as archive:  # the bomb is a well-formed zip
        assert archive.getinfo("archive/data/0").file_size == 64 << 20
        assert archive.testzip() is None


class Python2OrderedDict:
    """Pickles as Python 2 pickled an OrderedDict: OrderedDict([[key, value], ...]), then
    BUILD with the instance dict (torch's `_metadata`)."""

    def __init__(self, items, metadata):
        self.items, self.metadata = items, metadata

    def __reduce__(self):
        return collections.OrderedDict, ([list(item) for item in self.items],), self.metadata


def test_python2_ordered_dict_matches_torch(tmp_path):
    six = storage(numel=6)
    obj = Python2OrderedDict([("a", Tensor((2, 3), (3, 1), source=six)), ("b", Tensor((3,), (2,), source=six))],
                             {"_metadata": {"": {"version": 1}}})
    for got, want in read_both_ways(tmp_path, obj):
        assert list(got) == list(want) == ["a", "b"]


# --- Caffe2 files by hand -------------------------------------------------------------


def array_ops(shape, data, dtype="<f4", builds=1, empty_shape=(0,), data_ops=None):
    """Pickle opcodes of a NumPy array as Python 2 wrote it: _reconstruct(ndarray,
    empty_shape, 'b') then BUILD with (1, shape, dtype, False, data), `builds` times."""
    p = py2_pickle.Py2Pickler()
    w = p.out.write
    w(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
    w(pickle.MARK + pickle.GLOBAL + b"numpy\nndarray\n")
    p.tuple(list(empty_shape))
    p.string("b")
    w(pickle.TUPLE + pickle.REDUCE)
    for _ in range(builds):
        w(pickle.MARK)
        p.write(1)
        p.tuple(list(shape))
        w(pickle.GLOBAL + b"numpy\ndtype\n")
        p.tuple([dtype[1:], 0, 1])
        w(pickle.REDUCE)
        p.tuple([3, dtype[0], None, None, None, -1, -1, 0])
        w(pickle.BUILD + pickle.NEWFALSE)
        w(data_ops) if data_ops else p.string(data)
        w(pickle.TUPLE + pickle.BUILD)
    return p.out.getvalue()


def caffe2_file(path, ops_by_name):
    """A pickle of `{"blobs": {name: <opcodes>}}` in Python 2's protocol 2."""
    items = b"".join(pickle.SHORT_BINSTRING + bytes([len(name)]) + name.encode() + ops
                     for name, ops in ops_by_name.items())
    blobs_key = pickle.SHORT_BINSTRING + b"\x05blobs"
    path.write_bytes(pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + blobs_key + pickle.EMPTY_DICT
                     + pickle.MARK + items + pickle.SETITEMS + pickle.SETITEM + pickle.STOP)
    return path


def shared_data_blobs(path, count, nbytes):
    """`count` arrays whose data is one memoised `nbytes` string: small file, big arrays."""
    data = bytes(nbytes)
    first = array_ops((nbytes,), None, "|u1", data_ops=pickle.BINSTRING + struct.pack(
        "<i", nbytes) + data + pickle.BINPUT + b"\xc8")  # memo slot 200
    again = array_ops((nbytes,), None, "|u1", data_ops=pickle.BINGET + b"\xc8")
    return caffe2_file(path, {"b0": first, **{f"b{i}": again for i in range(1, count)}})


def codecs_amplified(path, count, nbytes):
    """`count` calls of _codecs.encode on one memoised `nbytes` string (Python 3's way of
    pickling bytes in protocol 2)."""
    text = b"x" * nbytes
    call = (pickle.GLOBAL + b"_codecs\nencode\n" + pickle.BINPUT + b"\x01"
            + pickle.BINUNICODE + struct.pack("<I", nbytes) + text
            + pickle.SHORT_BINUNICODE + b"\x06latin1" + pickle.TUPLE2 + pickle.BINPUT + b"\x02")
    again = pickle.BINGET + b"\x01" + pickle.BINGET + b"\x02" + pickle.REDUCE
    path.write_bytes(pickle.PROTO + b"\x02" + pickle.EMPTY_LIST + pickle.MARK + call
                     + pickle.REDUCE + again * (count - 1) + pickle.APPENDS + pickle.STOP)
    return path


def test_hand_written_caffe2_files_match_numpy(tmp_path):
    # The writers above against NumPy's own unpickling.
    want = np.arange(6, dtype=">i4").reshape(2, 3)
    path = caffe2_file(tmp_path / "c.pkl", {"w": array_ops((2, 3), want.tobytes(), ">i4")})
    trusted = pickle.loads(path.read_bytes(), encoding="latin1")["blobs"]["w"]
    np.testing.assert_array_equal(trusted, want)
    np.testing.assert_array_equal(read_checkpoint(path)["w"], want)
    shared = pickle.loads(shared_data_blobs(tmp_path / "s.pkl", 3, 8).read_bytes(),
                          encoding="latin1")["blobs"]
    assert [a.shape for a in shared.values()] == [(8,)] * 3
    assert pickle.loads(codecs_amplified(tmp_path / "e.pkl", 3, 4).read_bytes()) == [b"xxxx"] * 3


# --- hangs and blowups, in a subprocess -----------------------------------------------

RUNNER = r"""
import importlib.util, json, resource, sys, time
spec = importlib.util.spec_from_file_location("ckpt", sys.argv[1])
ckpt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ckpt)
# An address-space cap: a blowup fails with MemoryError instead of swapping the machine.
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
cap = vm * 1024 + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap if hard < 0 else min(cap, hard), hard))
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[2:]:
    print(json.dumps({"started": path}), flush=True)
    start = time.perf_counter()
    try:
        ckpt.read_checkpoint(path)
        error, message = None, ""
    except Exception as e:
        error, message = type(e).__name__, str(e)
    # Peak memory only grows, so growth since the start bounds every file read so far.
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    print(json.dumps({"path": path, "error": error, "message": message, "grew_mb": grew,
                      "seconds": time.perf_counter() - start}), flush=True)
"""


def laughs(kind, depth=40):
    """One object holding one shared object twice, `depth` times over: a few hundred
    bytes pickled, 2**depth items to walk, hash or repr."""
    obj = kind([1])
    for _ in range(depth):
        obj = kind([obj, obj])
    return obj


def dict_laughs(leaf, depth):
    tree = {"w": leaf}
    for _ in range(depth):
        tree = {"a": tree, "b": tree}
    return tree


def wrapper_cycle():
    outer = {}
    outer["state_dict"] = {"model": outer}
    return outer


def contains_itself():
    inner = {"w": Tensor((1,), (1,))}
    inner["again"] = inner
    return {"state_dict": inner}


def nested(depth):
    tree = {"w": Tensor((1,), (1,))}
    for _ in range(depth):
        tree = {"x": tree}
    return tree


TORCH_CASES = {
    # name: (object or pickle for a torch file, words of the CheckpointFormatError)
    "wrapper-cycle": (wrapper_cycle(), "cycle"),
    "contains-itself": (contains_itself(), "containing itself"),
    "nested-40": (nested(40), "nested more than 32"),
    "dict-laughs": (dict_laughs(7, 30), "more than 1000000 entries"),
    "dict-laughs-tensors": (dict_laughs(Tensor((1,), (1,)), 30), "past this read's limit"),
    "list-laughs-pid": ({"w": Tensor((1,), (1,), source=Persistent(laughs(list)))},
                        "persistent id a list of 2 items"),
    "list-laughs-shape": ({"w": Tensor(laughs(list), (1,))}, "shape of a list of 2 items"),
    "tuple-laughs-key": (keyed_by(laughs(tuple)), "dict or set key of type tuple"),
    "stride-0-1GiB": ({"w": Tensor((1 << 28,), (0,))}, "tensor 'w' of shape (268435456,) needs"),
    "stride-0-4TiB": ({"w": Tensor((1 << 20, 1 << 20), (0, 0))}, "past this read's limit"),
    "shape-past-storage": ({"w": Tensor((1 << 40,), (1,))},
                           "reaching element 1099511627775 of a storage of 1"),
    "empty-but-huge": ({"w": Tensor((0, 1 << 62), (1, 1))}, "past this read's limit"),
    "offset-of-100000-bits": ({"w": Tensor((1,), (1,), offset=1 << 100000)},
                              "an integer of 100001 bits"),
}


def write_torch_case(obj, serialization):
    pickled = obj if isinstance(obj, bytes) else torch_pickle(obj)
    return lambda path: write_torch(path, pickled, serialization=serialization)


def write_pickle(pickled):
    def write(path):
        path.write_bytes(pickled)
        return path

    return write


def legacy_count(path):
    # One float32 storage whose element count says 2**62.
    pickled = torch_pickle({"w": Tensor((1,), (1,))})
    data = write_torch(path, pickled, serialization="legacy").read_bytes()
    at = data.rindex(struct.pack("<q", 1) + ONE_FLOAT)
    path.write_bytes(data[:at] + struct.pack("<q", 1 << 62) + ONE_FLOAT)
    return path


def bzip2_entry(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", torch_pickle({"w": Tensor((1,), (1,))}))
        archive.writestr("archive/data/0", bytes(1000), compress_type=zipfile.ZIP_BZIP2)
    return path


def deep_json(path):
    header = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def safetensors_claiming(path, header_len=None):
    header = json.dumps({"a": {"dtype": "F32", "shape": [1 << 20, 1 << 20],
                               "data_offsets": [0, 1 << 42]}}).encode()
    path.write_bytes(struct.pack("<Q", header_len or len(header)) + header + ONE_FLOAT)
    return path


HOSTILE = {
    # name: (writes the file, expected outcomes, words of the message)
    **{f"{case}-{serialization}": (write_torch_case(obj, serialization),
                                   ("CheckpointFormatError",), words)
       for case, (obj, words) in TORCH_CASES.items() for serialization in ("zip", "legacy")},
    "legacy-count-2**62": (legacy_count, ("CheckpointFormatError",), "truncated in storage"),
    "zip-bomb": (lambda p: zip_bomb(p, 64 << 20), ("CheckpointFormatError",),
                 "'archive/data/0' needs 67108864 bytes"),
    # Inflates to 64 MiB, but its headers say 4 bytes: only those may be inflated.
    "zip-bomb-lying-header": (lambda p: zip_bomb(p, 4), (None, "CheckpointFormatError"), ""),
    "zip-bzip2": (bzip2_entry, ("CheckpointFormatError",), "compressed with method 12"),
    "caffe2-list-laughs": (write_pickle(pickle.dumps({"blobs": {"w": laughs(list)}}, protocol=2)),
                           ("CheckpointFormatError",), "blob 'w' of type list"),
    "caffe2-tuple-laughs-key": (write_pickle(keyed_by(laughs(tuple))), ("CheckpointFormatError",),
                                "dict or set key of type tuple"),
    "caffe2-shared-data": (lambda p: shared_data_blobs(p, 1000, 1 << 20),
                           ("CheckpointFormatError",), "past this read's limit"),
    "caffe2-codecs": (lambda p: codecs_amplified(p, 1000, 1 << 20), ("CheckpointFormatError",),
                      "past this read's limit"),
    "caffe2-huge-shape": (lambda p: caffe2_file(p, {"w": array_ops((1 << 20, 1 << 20), ONE_FLOAT)}),
                          ("CheckpointFormatError",), "expected 4398046511104 bytes"),
    "caffe2-no-data": (lambda p: caffe2_file(p, {"w": array_ops((), b"", builds=0,
                                                                empty_shape=(1 << 20,))}),
                       ("CheckpointFormatError",), "never sets"),
    "pickle-bytearray8-1GiB": (write_pickle(pickle.PROTO + b"\x05" + pickle.BYTEARRAY8
                                            + struct.pack("<Q", 1 << 30) + bytes(8) + pickle.STOP),
                               ("CheckpointFormatError",), "a bytearray of 1073741824 bytes"),
    "safetensors-deep-json": (deep_json, ("CheckpointFormatError",), "RecursionError"),
    "safetensors-huge-tensor": (safetensors_claiming, ("CheckpointFormatError",),
                                "covering 4398046511104 bytes of a 4-byte data section"),
    "safetensors-header-2**63": (lambda p: safetensors_claiming(p, 1 << 63),
                                 ("CheckpointFormatError",), "header of 9223372036854775808 bytes"),
}


@pytest.fixture(scope="module")
def hostile_results(tmp_path_factory):
    """Reads every hostile file in one subprocess: `{name: (path, result or None, the file
    it hung on or None)}`."""
    folder = tmp_path_factory.mktemp("hostile")
    paths = {name: write(folder / f"{name}.bin") for name, (write, _, _) in HOSTILE.items()}
    command = [sys.executable, "-c", RUNNER, MODULE, *map(str, paths.values())]
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                check=False).stdout
    except subprocess.TimeoutExpired as hung:  # the files before the hanging one have results
        output = hung.stdout.decode() if isinstance(hung.stdout, bytes) else hung.stdout or ""
    lines = [json.loads(line) for line in output.splitlines()]
    results = {line["path"]: line for line in lines if "path" in line}
    started = [line["started"] for line in lines if "started" in line]
    hung = started[-1] if started and started[-1] not in results else None
    return {name: (path, results.get(str(path)), hung) for name, path in paths.items()}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_file_fails_fast_in_bounded_memory(hostile_results, case):
    _, outcomes, words = HOSTILE[case]
    path, result, hung = hostile_results[case]
    assert path.stat().st_size < 2_000_000
    assert result is not None, f"no result: the reader hung or crashed on {hung}"
    assert result["error"] in outcomes, result
    if result["error"]:
        message = result["message"]
        assert str(path) in message and words in message and len(message) < 1000, message
    assert result["seconds"] < 10, result
    assert result["grew_mb"] < 50, result


# --- poisoning: a file must not change how later files are read ------------------------


def poisoned(global_name, state, body):
    """`body` (a protocol-2 pickle) preceded by a BUILD of `state` onto an allowed global."""
    module, _, name = global_name.rpartition(".")
    build = (pickle.GLOBAL + f"{module}\n{name}\n".encode()
             + pickle.dumps(state, protocol=2)[2:-1] + pickle.BUILD + pickle.POP)
    return body[:2] + build + body[2:]


def assert_bits(arrays, tensors):
    assert sorted(arrays) == sorted(tensors)
    for name, tensor in tensors.items():
        want = tensor.detach()
        want = want.float().numpy() if want.dtype == torch.bfloat16 else want.numpy()
        got = arrays[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), name


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("valid")
    tensors = state_dict()
    paths = {s: torch_save(tensors, folder / f"{s}.pth", s) for s in ("zip", "legacy")}
    paths["caffe2"] = folder / "c.pkl"
    paths["caffe2"].write_bytes(py2_pickle.dumps({"blobs": blobs()}))
    return tensors, paths


def assert_blob_bits(arrays):
    assert sorted(arrays) == sorted(blobs())
    for name, want in blobs().items():
        assert arrays[name].dtype == want.dtype and arrays[name].tobytes() == want.tobytes()


def assert_later_reads_intact(valid_files):
    tensors, paths = valid_files
    assert_bits(read_checkpoint(paths["zip"]), tensors)
    assert_bits(read_checkpoint(paths["legacy"]), tensors)
    assert_blob_bits(read_checkpoint(paths["caffe2"]))


@pytest.mark.parametrize("target, state", [
    ("torch.FloatStorage", {"dtype_name": "int32"}),  # the reported attack
    ("torch.FloatStorage", (None, {"name": "int32", "dtype_name": "int32"})),
    ("torch.float32", {"dtype_name": "int32", "name": "int32"}),
    ("torch.storage.UntypedStorage", {"dtype_name": "float64"}),
    ("torch._utils._rebuild_tensor_v2", (None, {"__defaults__": (0, (), ())})),
    ("torch._utils._rebuild_tensor_v2", {"__kwdefaults__": {"dtype_name": "int32"}}),
    ("collections.OrderedDict", {"x": 1}),
])
def test_build_on_allowed_globals_is_refused(tmp_path, valid_files, target, state):
    _, paths = valid_files
    with zipfile.ZipFile(paths["zip"]) as archive:
        body = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    hostile = tmp_path / "hostile.pth"
    hostile.write_bytes(replace_pickle(paths["zip"].read_bytes(), poisoned(target, state, body)))
    for _ in range(2):
        with pytest.raises(UnsafeCheckpointError, match="BUILD") as info:
            read_checkpoint(hostile)
        assert str(hostile) in str(info.value) and "not loaded" in str(info.value)
        assert_later_reads_intact(valid_files)


@pytest.mark.parametrize("target, state", [
    ("numpy.ndarray", {"x": 1}),
    ("numpy.dtype", (None, {"__defaults__": (True, True)})),
    ("numpy.core.multiarray._reconstruct", {"x": 1}),
    ("_codecs.encode", (None, {"__defaults__": ("latin1", "ignore")})),
])
def test_build_on_allowed_numpy_globals_is_refused(tmp_path, valid_files, target, state):
    _, paths = valid_files
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(poisoned(target, state, paths["caffe2"].read_bytes()))
    with pytest.raises(UnsafeCheckpointError, match="BUILD"):
        read_checkpoint(hostile)
    assert_later_reads_intact(valid_files)


def test_numpy_dtype_state_stays_in_its_file(tmp_path, valid_files):
    # numpy.dtype('f4', align=False, copy=False) is NumPy's shared float32; a byte-order
    # state built on it must only describe that file's dtype record.
    _, paths = valid_files
    body = paths["caffe2"].read_bytes()
    flip = (pickle.GLOBAL + b"numpy\ndtype\n" + pickle.MARK + pickle.SHORT_BINSTRING + b"\x02f4"
            + pickle.NEWFALSE + pickle.NEWFALSE + pickle.TUPLE + pickle.REDUCE
            + pickle.dumps((3, ">", None, None, None, -1, -1, 0), protocol=2)[2:-1]
            + pickle.BUILD + pickle.POP)
    path = tmp_path / "flip.pkl"
    path.write_bytes(body[:2] + flip + body[2:])
    assert_blob_bits(read_checkpoint(path))
    assert np.dtype("f4").byteorder == "=" and np.dtype("f4") == np.dtype("<f4")
    assert_later_reads_intact(valid_files)


# --- uninitialised memory -------------------------------------------------------------


def test_array_without_data_is_refused(tmp_path):
    # _reconstruct(ndarray, (1000,), 'b') with no BUILD: NumPy itself returns np.empty,
    # 1000 bytes of whatever the heap held, though the file has none of them.
    path = caffe2_file(tmp_path / "empty.pkl",
                       {"w": array_ops((), b"", builds=0, empty_shape=(1000,))})
    assert path.stat().st_size < 200
    trusted = pickle.loads(path.read_bytes(), encoding="latin1")["blobs"]["w"]
    assert trusted.shape == (1000,)
    with pytest.raises(CheckpointFormatError, match="never sets") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("case", ["short", "long", "twice", "object"])
def test_array_data_must_match_its_shape(tmp_path, case):
    ops = {
        "short": array_ops((4,), bytes(8)),
        "long": array_ops((4,), bytes(20)),
        "twice": array_ops((2,), bytes(8), builds=2),
        "object": array_ops((2,), bytes(16), dtype="|O8"),
    }[case]
    path = caffe2_file(tmp_path / f"{case}.pkl", {"w": ops})
    if case in ("short", "long"):  # NumPy's own setstate refuses these too
        with pytest.raises(ValueError):
            pickle.loads(path.read_bytes(), encoding="latin1")
    with pytest.raises(CheckpointFormatError, match=str(path)):
        read_checkpoint(path)


def test_protocol_5_buffer_must_match_its_shape(tmp_path):
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # NumPy 1
        from numpy.core.numeric import _frombuffer

    class Short:
        def __reduce__(self):
            return _frombuffer, (bytes(8), np.dtype("<f4"), (4,), "C")

    path = tmp_path / "short5.pkl"
    path.write_bytes(pickle.dumps({"w": Short()}, protocol=5))
    with pytest.raises(ValueError):  # NumPy refuses it too
        pickle.loads(path.read_bytes())
    with pytest.raises(CheckpointFormatError, match="expected 16 bytes"):
        read_checkpoint(path)


# --- safetensors, by the spec ---------------------------------------------------------

BASE_HEADER = {"__metadata__": {"format": "np"},
               "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
               "b": {"dtype": "I16", "shape": [2], "data_offsets": [16, 20]}}
BASE_DATA = np.arange(4, dtype="<f4").tobytes() + np.array([-3, 7], "<i2").tobytes()


def safetensors_bytes(header=None, data=BASE_DATA, text=None, length=None):
    text = json.dumps(header).encode() if text is None else text
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def with_entry(**changes):
    """BASE_HEADER with entries' fields updated (a dict) or entries replaced (anything else)."""
    header = json.loads(json.dumps(BASE_HEADER))
    for name, change in changes.items():
        header[name] = {**header.get(name, {}), **change} if isinstance(change, dict) else change
    return header


BASE_TEXT = json.dumps(BASE_HEADER).encode()
SPEC_VIOLATIONS = {
    "header-longer-than-file": safetensors_bytes(BASE_HEADER, length=10_000),
    "header-length-2**63": safetensors_bytes(BASE_HEADER, length=1 << 63),
    "header-empty": safetensors_bytes(text=b"", data=b""),
    "header-not-json": safetensors_bytes(text=b"{nope}"),
    "header-json-array": safetensors_bytes(text=b"[1, 2]"),
    "header-not-utf8": safetensors_bytes(text=BASE_TEXT[:-1] + b', "\xff": 1}'),
    "header-trailing-garbage": safetensors_bytes(text=BASE_TEXT + b"xx"),
    "duplicate-key": safetensors_bytes(text=b'{"a": {"dtype": "F32", "shape": [1], '
                                            b'"data_offsets": [0, 4]}, ' + BASE_TEXT[1:]),
    "offsets-float": safetensors_bytes(with_entry(a={"data_offsets": [0.0, 16]})),
    "offsets-three": safetensors_bytes(with_entry(b={"data_offsets": [16, 20, 20]})),
    "offsets-reversed": safetensors_bytes(with_entry(b={"data_offsets": [20, 16]})),
    "offsets-gap": safetensors_bytes(with_entry(b={"data_offsets": [18, 22]}),
                                     data=BASE_DATA + b"\0\0"),
    "offsets-overlap": safetensors_bytes(with_entry(b={"data_offsets": [12, 16]}),
                                         data=BASE_DATA[:16]),
    "offsets-not-from-0": safetensors_bytes(
        with_entry(a={"data_offsets": [4, 20]}, b={"data_offsets": [20, 24]}),
        data=bytes(4) + BASE_DATA),
    "data-trailing-bytes": safetensors_bytes(BASE_HEADER, data=BASE_DATA + bytes(8)),
    "data-short": safetensors_bytes(BASE_HEADER, data=BASE_DATA[:-2]),
    "shape-negative": safetensors_bytes(with_entry(b={"shape": [-2]})),
    "shape-float": safetensors_bytes(with_entry(b={"shape": [2.0]})),
    "shape-bool": safetensors_bytes(with_entry(b={"dtype": "U8", "shape": [True],
                                                  "data_offsets": [16, 17]}),
                                    data=BASE_DATA[:17]),
    "shape-string": safetensors_bytes(with_entry(b={"shape": "2"})),
    "dtype-unknown": safetensors_bytes(with_entry(b={"dtype": "X9"})),
    "byte-length-mismatch": safetensors_bytes(with_entry(b={"shape": [3]})),
    "missing-field": safetensors_bytes(with_entry(c={"dtype": "I16", "shape": [2]})),
    "entry-not-object": safetensors_bytes(with_entry(c=[1])),
    "metadata-not-strings": safetensors_bytes(with_entry(__metadata__={"k": 1})),
    "metadata-list": safetensors_bytes(with_entry(__metadata__=["k"])),
}
SPEC_VALID = {
    "metadata-null": safetensors_bytes(with_entry(__metadata__=None)),
    "offsets-listed-out-of-order": safetensors_bytes(
        with_entry(a={"data_offsets": [4, 20]}, b={"data_offsets": [0, 4]})),
    "zero-size-tensor": safetensors_bytes(
        with_entry(c={"dtype": "F32", "shape": [0, 3], "data_offsets": [20, 20]})),
    "trailing-whitespace": safetensors_bytes(text=BASE_TEXT + b"    \n"),
    "no-tensors": safetensors_bytes({}, data=b""),
}


@pytest.fixture(scope="module")
def safetensors_numpy():
    return pytest.importorskip("safetensors.numpy")


@pytest.mark.parametrize("case", sorted(SPEC_VIOLATIONS))
def test_safetensors_spec_violations(tmp_path, safetensors_numpy, case):
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(SPEC_VIOLATIONS[case])
    if case != "duplicate-key":  # the package keeps the last of duplicate keys
        with pytest.raises(Exception, match="deserializing"):
            safetensors_numpy.load(SPEC_VIOLATIONS[case])
    with pytest.raises(CheckpointFormatError) as info:
        read_checkpoint(path, format="safetensors")
    message = str(info.value)
    assert str(path) in message and len(message) < 1000, message


@pytest.mark.parametrize("case", sorted(SPEC_VALID))
def test_safetensors_spec_edge_cases_load_as_the_package_does(tmp_path, safetensors_numpy,
                                                              case):
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(SPEC_VALID[case])
    want = safetensors_numpy.load(SPEC_VALID[case])
    got = read_checkpoint(path, format="safetensors")
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array, err_msg=name)
