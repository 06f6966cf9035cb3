"""Read PyTorch, safetensors and Caffe2 checkpoints into `{name: numpy array}`.

Checkpoints are pickles, and unpickling calls whatever functions the file names, so a
downloaded `.pth` or `.pkl` can run any code when loaded with `torch.load(weights_only=False)`
or `pickle.load`. This module never imports torch and never lets a pickle call anything but
a short allow-list per format: `_RestrictedUnpickler.find_class` maps each allowed global
to a local NumPy re-implementation (torch's rebuild functions, storage types, NumPy's array
reconstruction), and refuses every other global before anything is called.

Formats (detected from the file's bytes, not its extension):
    "torch": `torch.save` output, the zip format (`<top>/data.pkl` + `<top>/data/<key>`)
        and the legacy pre-1.6 stream (magic number, protocol, sys_info, object pickle,
        storage keys, raw storages).
    "safetensors": 8-byte little-endian header length, JSON header, raw tensor bytes.
    "caffe2": a pickle of NumPy arrays, as the VMZ / R2Plus1D release wrote them
        (Python 2 cPickle of `dict(blobs={name: array})` or a bare `{name: array}`).

Limits: a hostile file must fail fast, with a clear error, in bounded memory.
    - Bytes: one read may allocate at most `max_bytes` for data (decompressed zip entries,
      returned arrays plus 256 bytes each for their Python objects, byte strings the pickle
      builds), by default 4 x the file size + 16 MiB.
      Every shape, stride, offset and zip entry size is checked against the bytes present
      and against this budget before anything is allocated, so a 300-byte tensor with a
      stride of 0 cannot ask for gigabytes.
    - Structure: torch state dicts are walked at most 32 dicts deep and 1,000,000 entries in
      all, names are at most 1000 characters, arrays at most 32 dimensions, safetensors
      headers at most 100,000,000 bytes (the safetensors package's own limit); dict and set
      keys in pickles are plain scalars (hashing a tuple that nests one shared tuple 40 times
      takes 2**40 steps). Wrapper dicts that refer back to themselves are refused. Untrusted
      objects are described in messages by type and size, never by their full repr.
    - Pickle state: every read builds its own allow-table; the pickle's BUILD opcode (set an
      object's state) only reaches the records this module creates for it (torch's state
      dict OrderedDict, NumPy arrays and dtypes), never an allowed function or marker, so a
      file cannot change how later files are read. NumPy arrays only exist once the pickle
      gave them exactly `size x itemsize` bytes of data: never uninitialised memory.
"""

import collections
import io
import json
import math
import os
import pickle
import struct
import zipfile
from typing import ClassVar, NamedTuple

import numpy as np

__all__ = [
    "CheckpointFormatError",
    "UnsafeCheckpointError",
    "detect_format",
    "read_checkpoint",
]

FORMATS = ("torch", "safetensors", "caffe2")
_SUPPORTED = (
    "supported: PyTorch torch.save files (zip or legacy), safetensors, and Caffe2 "
    "pickles of NumPy arrays"
)
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# How torch.save's legacy stream pickles it, after the PROTO opcode: LONG1, 10 bytes.
_TORCH_LEGACY_HEAD = b"\x8a\x0a" + _TORCH_LEGACY_MAGIC.to_bytes(10, "little")
_WRAPPER_KEYS = ("state_dict", "model_state", "model")
_SCALARS = (str, bytes, int, float, bool, type(None))

# Limits (see the module docstring).
_BUDGET_FACTOR = 4  # x the file size: float32 storages, their copies, bfloat16 widened
_BUDGET_SLACK = 16 << 20  # so that small files may still hold broadcast (stride-0) views
_ENTRY_COST = 256  # bytes charged per returned array besides its data: its Python objects
_MAX_DIMS = 32  # NumPy 1's limit
_MAX_DEPTH = 32
_MAX_ENTRIES = 1_000_000
_MAX_NAME = 1000
_MAX_SAFETENSORS_HEADER = 100_000_000


class UnsafeCheckpointError(ValueError):
    """A checkpoint's pickle names a global outside its format's allow-list, or tries to
    change the state of an object the reader handed it."""


class CheckpointFormatError(ValueError):
    """A checkpoint is unreadable, truncated, over the reader's limits or of no supported
    format."""


def _format_error(path, found, fix=None):
    message = f"Cannot read checkpoint {os.fspath(path)!r}: {found}; {_SUPPORTED}."
    return CheckpointFormatError(message + (f" {fix}" if fix else ""))


def _clip(text, limit=80):
    return text if len(text) <= limit else f"{text[:limit]}..."


def _describe(value):
    """A short description of an untrusted value. Never its full repr: pickles can share
    one object many times over, so a repr can be exponentially long."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, (str, bytes)):
        return repr(value[:80]) + ("..." if len(value) > 80 else "")
    if isinstance(value, _SCALARS):
        return repr(value)
    if (isinstance(value, (list, tuple)) and len(value) <= 8
            and all(isinstance(item, _SCALARS) for item in value)):
        items = ", ".join(_describe(item) for item in value)
        return f"[{items}]" if isinstance(value, list) else f"({items}{',' * (len(value) == 1)})"
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


class _Load:
    """One read of one file: its path, for messages, and the bytes it may still allocate."""

    def __init__(self, path, max_bytes):
        self.path, self.limit, self.left = path, max_bytes, max_bytes

    def error(self, found, fix=None):
        return _format_error(self.path, found, fix)

    def charge(self, nbytes, what):
        """Reserves `nbytes` before they are allocated; refuses past the budget."""
        if nbytes > self.left:
            raise CheckpointFormatError(
                f"Cannot read checkpoint {os.fspath(self.path)!r}: {what} needs {nbytes} bytes, "
                f"past this read's limit of {self.limit} bytes ({self.left} left). The file "
                "describes far more data than it holds, so it is corrupt or hostile. If you "
                "trust it, pass a larger max_bytes to read_checkpoint.")
        self.left -= nbytes


def _array_bytes(shape, itemsize):
    """Bytes charged for an array: its size, zero-length axes counted as 1, because NumPy
    refuses even an empty array whose other axes multiply past its limit."""
    return math.prod(max(n, 1) for n in shape) * itemsize + _ENTRY_COST


def _dims(values, what):
    """A shape, stride or offset list as a tuple of ints in [0, 2**63), at most 32 long."""
    if not (isinstance(values, (tuple, list)) and len(values) <= _MAX_DIMS
            and all(isinstance(n, int) and 0 <= n < 2**63 for n in values)):
        raise pickle.UnpicklingError(f"a {what} of {_describe(values)}")
    return tuple(int(n) for n in values)


def _read_file(load):
    try:
        with open(load.path, "rb") as f:
            return f.read()
    except OSError as error:
        raise load.error(f"no readable file ({error.strerror})") from error


# --- dtypes -------------------------------------------------------------------------

# torch dtype name -> NumPy dtype of the raw little-endian bytes. bfloat16 is read as its
# 16 raw bits and widened to float32 at the end (_finish_array).
_TORCH_DTYPES = {
    "float64": "<f8", "float32": "<f4", "float16": "<f2", "bfloat16": "<u2",
    "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1",
    "uint64": "<u8", "uint32": "<u4", "uint16": "<u2", "uint8": "u1", "bool": "?",
}
_TORCH_DTYPE_ALIASES = {
    "double": "float64", "float": "float32", "half": "float16", "long": "int64",
    "int": "int32", "short": "int16",
}
_TORCH_STORAGES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool",
}
# NumPy dtype kinds a Caffe2 pickle may hold: booleans, numbers, fixed-width strings.
_NUMPY_KINDS = "biufcSU"


def _out_itemsize(dtype_name):
    return 4 if dtype_name == "bfloat16" else np.dtype(_TORCH_DTYPES[dtype_name]).itemsize


def _finish_array(raw, dtype_name):
    """Returns a standalone array in native byte order; bfloat16 bits become float32."""
    if dtype_name == "bfloat16":
        out = raw.astype(np.uint32)
        out <<= 16  # in place: no second temporary of the output's size
        return out.view(np.float32)
    return np.array(raw, dtype=raw.dtype.newbyteorder("="))


# --- restricted unpickling ----------------------------------------------------------


class _Buildable:
    """Base of the only objects a pickle may BUILD: records made fresh for one read."""

    def build(self, state):
        raise NotImplementedError


def _dict_key(key):
    # Hashing is the one thing unpickling does to a value by itself, and a tuple nesting one
    # shared tuple 40 times takes 2**40 steps to hash, so keys are plain scalars.
    if isinstance(key, (str, bytes, float, type(None))) or (
            isinstance(key, int) and key.bit_length() <= 64):
        return key
    raise pickle.UnpicklingError(f"a dict or set key of type {type(key).__name__}")


class _RestrictedUnpickler(pickle._Unpickler):
    """A pickle reader that can only call, and only modify, what the reader allows.

    `allowed` maps `(module, name)` to what the pickle gets instead of the real global; any
    other global raises `UnsafeCheckpointError` before anything is called. Pickles can only
    call what `find_class` hands out (REDUCE, NEWOBJ, INST, OBJ, EXT* all go through it),
    and it hands out no classes, so nothing outside the table ever runs.

    This is CPython's pure-Python unpickler (`pickle._Unpickler`, the reference the C one
    mirrors), because only it lets single opcodes be replaced: BUILD reaches `_Buildable`
    records only (on a function it would rewrite `__defaults__`, on a marker its fields, for
    every later read), dicts and sets only take scalar keys (see `_dict_key`), and
    BYTEARRAY8 allocates no more than the bytes it reads. Pickles are read from memory, so
    no declared length makes a read allocate more than the file holds.
    """

    def __init__(self, stream, load, allowed, persistent_load=None, encoding="ASCII"):
        super().__init__(stream, encoding=encoding)
        self._load = load
        self._allowed = allowed
        self._persistent = persistent_load

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"Refused to load checkpoint {os.fspath(self._load.path)!r}: its pickle "
                f"references the global {_clip(module)}.{_clip(name)}, "
                "which is not on the allow-list for this format. The checkpoint was not "
                "loaded, because loading it could run code. If you trust the file, load it "
                "with torch and re-save only its state dict (torch.save(model.state_dict(), "
                "path)) or as safetensors."
            ) from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise pickle.UnpicklingError("persistent ids are not used by this format")
        return self._persistent(pid)

    def _load_build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, _Buildable):
            raise UnsafeCheckpointError(
                f"Refused to load checkpoint {os.fspath(self._load.path)!r}: its pickle sets "
                f"the state of a {type(target).__name__} (the BUILD opcode), which this format "
                "only does for state dicts and NumPy arrays. The checkpoint was not loaded: "
                "changing the reader's own objects could corrupt this and later loads. If you "
                "trust the file, re-save it with torch as a plain state dict or as safetensors.")
        target.build(state)

    def _load_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self._target(dict)[_dict_key(key)] = value

    def _load_setitems(self):
        items = self.pop_mark()
        target = self._target(dict)
        for i in range(0, len(items), 2):
            target[_dict_key(items[i])] = items[i + 1]

    def _load_dict(self):
        items = self.pop_mark()
        self.append({_dict_key(items[i]): items[i + 1] for i in range(0, len(items), 2)})

    def _load_additems(self):
        items = self.pop_mark()
        self._target(set).update(_dict_key(item) for item in items)

    def _load_frozenset(self):
        self.append(frozenset(_dict_key(item) for item in self.pop_mark()))

    def _load_bytearray8(self):
        # The stock opcode allocates its declared length (up to 2**64) before reading.
        (size,) = struct.unpack("<Q", self.read(8))
        data = self.read(size)  # from an in-memory stream: at most the bytes present
        if len(data) != size:
            raise pickle.UnpicklingError(f"a bytearray of {size} bytes in a shorter pickle")
        self.append(bytearray(data))

    def _target(self, kind):
        target = self.stack[-1]
        if not isinstance(target, kind):
            raise pickle.UnpicklingError(f"{kind.__name__} items added to a {type(target).__name__}")
        return target

    dispatch: ClassVar[dict] = {
        **pickle._Unpickler.dispatch,
        pickle.BUILD[0]: _load_build,
        pickle.SETITEM[0]: _load_setitem,
        pickle.SETITEMS[0]: _load_setitems,
        pickle.DICT[0]: _load_dict,
        pickle.ADDITEMS[0]: _load_additems,
        pickle.FROZENSET[0]: _load_frozenset,
        pickle.BYTEARRAY8[0]: _load_bytearray8,
    }


def _unpickle(stream, load, allowed, persistent_load=None, encoding="ASCII"):
    """Runs one restricted unpickling; any failure but ours is a format error."""
    try:
        return _RestrictedUnpickler(stream, load, allowed, persistent_load, encoding).load()
    except (UnsafeCheckpointError, CheckpointFormatError, MemoryError):
        raise  # a real out-of-memory is not a malformed file
    except Exception as error:  # truncated or malformed pickles raise almost anything
        raise load.error(f"a malformed pickle ({type(error).__name__}: {str(error)[:300]})",
                         "The file may be truncated: download it again.") from error


# --- torch -------------------------------------------------------------------------


class _TorchDtype(NamedTuple):
    """Stands in for a torch storage class or dtype object: immutable, not callable."""

    name: str


class _StorageRef:
    """A storage named by a torch persistent id; its bytes are read after unpickling."""

    __slots__ = ("dtype_name", "key")

    def __init__(self, key, dtype_name):
        self.key, self.dtype_name = key, dtype_name


class _TensorRef:
    """What a torch rebuild function returns: a strided view into a `_StorageRef`."""

    __slots__ = ("dtype_name", "offset", "shape", "storage", "stride")

    def __init__(self, storage, offset, shape, stride, dtype_name):
        self.storage, self.offset, self.dtype_name = storage, offset, dtype_name
        self.shape, self.stride = shape, stride


class _StateDict(collections.OrderedDict, _Buildable):
    """torch's state dicts are OrderedDicts whose `_metadata` attribute comes by BUILD."""

    def build(self, state):
        pass  # the metadata (per-module versions) is not needed to read the tensors


def _tensor_ref(storage, offset, shape, stride, dtype):
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(f"a tensor rebuilt from {_describe(storage)}")
    if not isinstance(dtype, _TorchDtype):
        raise pickle.UnpicklingError(f"a tensor of dtype {_describe(dtype)}")
    offset = _dims([offset], "storage offset")[0]
    shape, stride = _dims(shape, "shape"), _dims(stride, "stride")
    if len(shape) != len(stride):
        raise pickle.UnpicklingError(f"a tensor with shape {shape} but stride {stride}")
    return _TensorRef(storage, offset, shape, stride, dtype.name)


def _rebuild_tensor(storage, offset, shape, stride, *_ignored):
    # v1 (storage, offset, size, stride) and v2 (+ requires_grad, backward_hooks[, metadata]).
    dtype = _TorchDtype(storage.dtype_name) if isinstance(storage, _StorageRef) else None
    return _tensor_ref(storage, offset, shape, stride, dtype)


def _rebuild_tensor_v3(storage, offset, shape, stride, requires_grad, hooks, dtype, *_meta):
    # Dtypes without a legacy storage class pickle an UntypedStorage plus a dtype object.
    return _tensor_ref(storage, offset, shape, stride, dtype)


def _rebuild_parameter(data, *_ignored):
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError(f"a parameter holding {_describe(data)}")
    return data


def _torch_size(dims=()):
    return _dims(dims, "torch.Size")


def _torch_allowed(load):
    """The allow-table of one torch read: fresh markers, nothing shared between reads."""

    def ordered_dict(pairs=()):
        # torch.save writes OrderedDict() + SETITEMS; Python 2 wrote OrderedDict([[k, v], ...]).
        if not isinstance(pairs, (list, tuple)):
            raise pickle.UnpicklingError(f"an OrderedDict of {_describe(pairs)}")
        load.charge(len(pairs) * _ENTRY_COST, "an OrderedDict")  # a list reused by memo
        result = _StateDict()
        for pair in pairs:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise pickle.UnpicklingError(f"an OrderedDict item {_describe(pair)}")
            result[_dict_key(pair[0])] = pair[1]
        return result

    allowed = {
        ("collections", "OrderedDict"): ordered_dict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): _torch_size,
        ("torch.storage", "UntypedStorage"): _TorchDtype("uint8"),
    }
    for storage, dtype_name in _TORCH_STORAGES.items():
        allowed[("torch", storage)] = _TorchDtype(dtype_name)
    for dtype_name in (*_TORCH_DTYPES, *_TORCH_DTYPE_ALIASES):
        allowed[("torch", dtype_name)] = _TorchDtype(_TORCH_DTYPE_ALIASES.get(dtype_name, dtype_name))
    return allowed


def _storage_ref(pid, load):
    """Persistent id `('storage', type, key, location, numel[, view_metadata])`."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
            and isinstance(pid[1], _TorchDtype) and isinstance(pid[2], str)
            and len(pid[2]) <= 100):
        raise load.error(f"an unknown torch persistent id {_describe(pid)}")
    if len(pid) > 5 and pid[5] is not None:
        raise load.error("a pre-0.4 torch storage view", "Re-save it with a current PyTorch.")
    return _StorageRef(pid[2], pid[1].name)


def _tensor_array(ref, raw_bytes, load, name):
    """Materialises a `_TensorRef` from its storage's raw bytes.

    Checks the view against the storage and the read's budget before allocating: a
    stride-0 view of one element may claim any shape.
    """
    dtype = np.dtype(_TORCH_DTYPES[ref.dtype_name])
    size = len(raw_bytes) // dtype.itemsize
    if math.prod(ref.shape):
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
        if last >= size:
            raise load.error(
                f"tensor {_describe(name)} of shape {ref.shape}, stride {ref.stride}, offset "
                f"{ref.offset}, reaching element {last} of a storage of {size}",
                "The file is truncated or corrupt: download it again.")
    load.charge(_array_bytes(ref.shape, _out_itemsize(ref.dtype_name)) + len(name),
                f"tensor {_describe(name)} of shape {ref.shape}")
    storage = np.frombuffer(raw_bytes, dtype=dtype, count=size)
    if not math.prod(ref.shape):
        return _finish_array(np.empty(ref.shape, dtype), ref.dtype_name)
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset:], shape=ref.shape, writeable=False,
        # A length-1 axis never steps, whatever its stride says (it may be huge).
        strides=[s * dtype.itemsize if n > 1 else 0 for n, s in zip(ref.shape, ref.stride)])
    return _finish_array(view, ref.dtype_name)


def _read_torch_zip(load):
    try:
        archive = zipfile.ZipFile(load.path)
    except MemoryError:
        raise
    except Exception as error:  # zipfile raises many types on damaged archives
        raise load.error(f"a damaged zip archive ({type(error).__name__}: {str(error)[:200]})",
                         "The file may be truncated: download it again.") from error
    with archive:
        entries = {info.filename: info for info in archive.infolist()}
        pickles = [n for n in entries if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            listed = ", ".join(_describe(n) for n in list(entries)[:8])
            raise load.error(f"a zip archive without a single */data.pkl (entries: {listed})")
        top = pickles[0][: -len("data.pkl")]
        pickled = _zip_entry(archive, entries[pickles[0]], load)
        obj = _unpickle(io.BytesIO(pickled), load, _torch_allowed(load),
                        lambda pid: _storage_ref(pid, load))

        def storage_bytes(key):
            info = entries.get(f"{top}data/{key}")
            if info is None:
                raise load.error(f"no storage entry {_describe(f'{top}data/{key}')}")
            return _zip_entry(archive, info, load)

        return _torch_state_dict(obj, storage_bytes, load)


def _zip_entry(archive, info, load):
    """An entry's bytes, its declared size checked against the budget before reading."""
    name = _describe(info.filename)
    # bzip2 and lzma inflate a whole chunk at once, whatever the declared size says.
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise load.error(f"zip entry {name} compressed with method {info.compress_type}",
                         "torch.save stores entries uncompressed: re-save the file.")
    load.charge(info.file_size, f"zip entry {name}")
    try:
        with archive.open(info) as entry:
            data = entry.read(info.file_size + 1)  # one byte more shows a lying header
    except MemoryError:
        raise
    except Exception as error:  # zipfile raises many types on damaged archives
        raise load.error(f"a damaged zip entry {name} ({type(error).__name__}: "
                         f"{str(error)[:200]})",
                         "The file may be truncated: download it again.") from error
    if len(data) != info.file_size:
        raise load.error(f"zip entry {name} holding {len(data)} bytes where its header says "
                         f"{info.file_size}", "The file is corrupt: download it again.")
    return data


def _read_torch_legacy(load):
    data = _read_file(load)
    stream = io.BytesIO(data)
    magic = _unpickle(stream, load, {})
    if magic != _TORCH_LEGACY_MAGIC:
        raise load.error("a pickle without torch's legacy magic number")
    _unpickle(stream, load, {})  # protocol version
    sys_info = _unpickle(stream, load, {})
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise load.error("a big-endian legacy torch file")
    storage_dtypes = {}

    def persistent_load(pid):
        ref = _storage_ref(pid, load)
        storage_dtypes[ref.key] = ref.dtype_name
        return ref

    obj = _unpickle(stream, load, _torch_allowed(load), persistent_load, encoding="latin1")
    keys = _unpickle(stream, load, {})
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)
            and len(set(keys)) == len(keys)):
        raise load.error(f"legacy torch storage keys {_describe(keys)}, expected a list of "
                         "distinct strings")
    # Then, per key in that order: int64 little-endian element count, raw elements.
    storages, position, view = {}, stream.tell(), memoryview(data)
    for key in keys:
        itemsize = np.dtype(_TORCH_DTYPES[storage_dtypes.get(key, "uint8")]).itemsize
        count = struct.unpack_from("<q", data, position)[0] if position + 8 <= len(data) else -1
        end = position + 8 + count * itemsize
        if count < 0 or end > len(data):
            raise load.error(f"a legacy torch file truncated in storage {_describe(key)}",
                             "Download it again.")
        storages[key], position = view[position + 8: end], end

    def storage_bytes(key):
        if key not in storages:
            raise load.error(f"no data for storage {_describe(key)}")
        return storages[key]

    return _torch_state_dict(obj, storage_bytes, load)


def _torch_state_dict(obj, storage_bytes, load):
    """Unwraps `{"state_dict": ...}`-style wrappers, flattens, strips `module.`."""
    seen = set()
    while isinstance(obj, dict):
        if id(obj) in seen:
            raise load.error("a torch file whose wrapper dicts contain each other in a cycle",
                             f"Expected a state dict of tensors, bare or under one of "
                             f"{_WRAPPER_KEYS}.")
        seen.add(id(obj))
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise load.error(f"a torch file holding a {type(obj).__name__}, "
                         "not a state dict of tensors")
    cache, tensors = {}, {}
    for name, value in _flatten(obj, load):
        if not isinstance(value, _TensorRef):
            continue  # plain scalars (epoch, version...)
        key = value.storage.key
        if key not in cache:
            cache[key] = storage_bytes(key)
        name = name.removeprefix("module.")
        if name in tensors:
            raise load.error(f"two tensors named {_describe(name)} once 'module.' is removed")
        tensors[name] = _tensor_array(value, cache[key], load, name)
    return tensors


def _flatten(obj, load):
    """Yields `(dotted name, leaf)` for nested dicts, depth-first in order.

    Bounded, because memo-shared dicts can repeat a subtree exponentially often or contain
    themselves: at most `_MAX_DEPTH` dicts deep, `_MAX_ENTRIES` entries, `_MAX_NAME` chars.
    """
    fix = f"Expected a state dict of tensors, bare or under one of {_WRAPPER_KEYS}."
    stack, path, entries = [("", iter(obj.items()))], [id(obj)], 0
    while stack:
        prefix, items = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            path.pop()
            continue
        key, value = item
        entries += 1
        if entries > _MAX_ENTRIES:
            raise load.error(f"a torch file with more than {_MAX_ENTRIES} entries", fix)
        if isinstance(key, (str, bytes)) and len(key) > _MAX_NAME:
            raise load.error(f"an entry name of {len(key)} characters", fix)
        name = f"{prefix}{key}"
        if len(name) > _MAX_NAME:
            raise load.error(f"an entry name of more than {_MAX_NAME} characters "
                             f"({_describe(name)})", fix)
        if isinstance(value, dict):
            if id(value) in path:
                raise load.error(f"entry {_describe(name)} containing itself", fix)
            if len(stack) >= _MAX_DEPTH:
                raise load.error(f"dicts nested more than {_MAX_DEPTH} deep at "
                                 f"{_describe(name)}", fix)
            stack.append((f"{name}.", iter(value.items())))
            path.append(id(value))
        elif isinstance(value, (_TensorRef, *_SCALARS)):
            yield name, value
        else:
            raise load.error(
                f"entry {_describe(name)} of type {type(value).__name__} among the tensors", fix)


# --- caffe2 ------------------------------------------------------------------------


class _NumpyDtype(_Buildable):
    """numpy.dtype(spec, align, copy) + BUILD (byte order): a plain dtype, nothing more."""

    def __init__(self, spec):
        if not (isinstance(spec, str) and len(spec) <= 8):
            raise pickle.UnpicklingError(f"a NumPy dtype {_describe(spec)}")
        self.dtype = np.dtype(spec)
        if self.dtype.kind not in _NUMPY_KINDS or self.dtype.itemsize == 0:
            raise pickle.UnpicklingError(f"a NumPy array of dtype {self.dtype} (only numbers, "
                                         "booleans and fixed-width strings are read)")

    def build(self, state):
        # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[1] in "<>|="
                and state[2:5] == (None, None, None)):
            raise pickle.UnpicklingError(f"a NumPy dtype state {_describe(state)}")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _NumpyArray(_Buildable):
    """numpy's `_reconstruct(ndarray, ...)`: an array that exists only once BUILD (or
    `_frombuffer`) gave it exactly `size x itemsize` bytes; `array` is None until then."""

    def __init__(self, load):
        self.load, self.array = load, None

    def build(self, state):
        # (version, shape, dtype, is_fortran, data), or without the version (older NumPy).
        if not (isinstance(state, tuple) and len(state) in (4, 5)):
            raise pickle.UnpicklingError(f"a NumPy array state {_describe(state)}")
        self.fill(*state[-4:])

    def fill(self, shape, dtype, fortran, data):
        if self.array is not None:
            raise pickle.UnpicklingError("a NumPy array given its data twice")
        shape = _dims(shape, "NumPy array shape")
        if not (isinstance(dtype, _NumpyDtype) and isinstance(fortran, int)):
            raise pickle.UnpicklingError(f"a NumPy array of dtype {_describe(dtype)}")
        if isinstance(data, str):
            data = data.encode("latin1")  # Python 2 str read with encoding="latin1", as NumPy does
        dtype = dtype.dtype
        expected = math.prod(shape) * dtype.itemsize
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != expected:
            raise pickle.UnpicklingError(
                f"a NumPy array of shape {shape} and dtype {dtype} with {_describe(data)} as "
                f"data, expected {expected} bytes")
        self.load.charge(_array_bytes(shape, dtype.itemsize), f"an array of shape {shape}")
        flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape))
        self.array = np.array(flat.reshape(shape, order="F" if fortran else "C"),
                              dtype=dtype.newbyteorder("="), order="K")


def _caffe2_allowed(load):
    """The allow-table of one Caffe2 read: NumPy's reconstruction, but only via records."""
    ndarray = object()  # stands in for numpy.ndarray, only accepted by reconstruct

    def dtype(spec, align=False, copy=True):
        return _NumpyDtype(spec)

    def reconstruct(subtype, shape, dtype_code):
        if subtype is not ndarray:
            raise pickle.UnpicklingError(f"_reconstruct of {_describe(subtype)}")
        return _NumpyArray(load)

    def frombuffer(buffer, dtype, shape, order):
        # NumPy's protocol-5 array reduce.
        array = _NumpyArray(load)
        array.fill(shape, dtype, order == "F", buffer)
        return array

    def codecs_encode(text, encoding="utf-8", errors="strict"):
        # Protocol <= 2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise pickle.UnpicklingError(f"_codecs.encode with encoding {_describe(encoding)}")
        load.charge(len(text), "a pickled byte string")  # one string may be encoded many times
        return text.encode("latin1", "strict")

    allowed = {("numpy", "ndarray"): ndarray, ("numpy", "dtype"): dtype,
               ("_codecs", "encode"): codecs_encode}
    for core in ("numpy.core", "numpy._core"):  # NumPy 1 / NumPy 2 spellings
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


def _read_caffe2(load):
    obj = _unpickle(io.BytesIO(_read_file(load)), load, _caffe2_allowed(load),
                    encoding="latin1")
    blobs = obj.get("blobs", obj.get(b"blobs")) if isinstance(obj, dict) else None
    obj = blobs if isinstance(blobs, dict) else obj
    if not isinstance(obj, dict):
        raise load.error(f"a pickle of a {type(obj).__name__}, not a dict of arrays")
    arrays, seen = {}, set()
    for name, value in obj.items():
        name = name.decode("latin1") if isinstance(name, bytes) else str(name)
        if isinstance(value, _NumpyArray):
            if value.array is None:
                raise load.error(
                    f"blob {_describe(name)}: a NumPy array whose data the pickle never sets "
                    "(reading it would return uninitialised memory)",
                    "The file is corrupt: download it again.")
            if name in arrays:
                raise load.error(f"two blobs named {_describe(name)}")
            if id(value) in seen:  # one array under two names: each name gets its own copy
                load.charge(value.array.nbytes + _ENTRY_COST, f"blob {_describe(name)}")
                arrays[name] = value.array.copy()
            else:
                seen.add(id(value))
                arrays[name] = value.array
        elif not isinstance(value, (str, bytes, int, float)):
            raise load.error(f"blob {_describe(name)} of type {type(value).__name__}, "
                             "expected NumPy arrays")
    return arrays


# --- safetensors -------------------------------------------------------------------


def _unique_keys(pairs):
    # json keeps the last of duplicate keys; a header whose keys repeat is ambiguous.
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {_describe(key)} appears twice")
        result[key] = value
    return result


def _safetensors_entry(name, info, load):
    """`(dtype name, shape, begin, end)` of one header entry, checked against the spec."""
    fields = info if isinstance(info, dict) else {}
    dtype, shape, offsets = (fields.get(k) for k in ("dtype", "shape", "data_offsets"))
    valid = (isinstance(dtype, str) and dtype in _SAFETENSORS_DTYPES
             and isinstance(shape, list) and len(shape) <= _MAX_DIMS
             and all(type(n) is int and n >= 0 for n in shape)
             and isinstance(offsets, list) and len(offsets) == 2
             and all(type(n) is int and n >= 0 for n in offsets) and offsets[0] <= offsets[1])
    if not valid:
        got = (f"dtype {_describe(dtype)}, shape {_describe(shape)}, data_offsets "
               f"{_describe(offsets)}" if isinstance(info, dict) else _describe(info))
        raise load.error(
            f"safetensors entry {_describe(name)} with {got}",
            "Each entry needs a dtype (one of " + ", ".join(_SAFETENSORS_DTYPES) + "), a shape "
            "(a list of non-negative integers) and data_offsets (two integers, begin <= end).")
    dtype_name = _SAFETENSORS_DTYPES[dtype]
    nbytes = math.prod(shape) * np.dtype(_TORCH_DTYPES[dtype_name]).itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise load.error(f"safetensors tensor {_describe(name)} of dtype {dtype} and shape "
                         f"{_describe(shape)} at bytes {_describe(offsets)}, which is "
                         f"{offsets[1] - offsets[0]} bytes, expected {nbytes}")
    return dtype_name, tuple(shape), offsets[0], offsets[1]


def _read_safetensors(load):
    data = _read_file(load)
    truncated = "The file is truncated: download it again."
    if len(data) < 8:
        raise load.error(f"{len(data)} bytes, too short for a safetensors header", truncated)
    (header_len,) = struct.unpack_from("<Q", data)
    if header_len > _MAX_SAFETENSORS_HEADER or 8 + header_len > len(data):
        raise load.error(f"a safetensors header of {header_len} bytes in a file of {len(data)} "
                         f"(at most {_MAX_SAFETENSORS_HEADER})", truncated)
    body = 8 + header_len
    try:
        text = data[8:body].decode("utf-8")
        if not text.startswith("{"):
            raise ValueError("it does not start with '{'")
        header = json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise load.error(f"a safetensors header that is not a UTF-8 JSON object "
                         f"({type(error).__name__}: {str(error)[:200]})") from None
    metadata = header.pop("__metadata__", None)  # null is accepted, as the package does
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values())):
        raise load.error(f"safetensors __metadata__ {_describe(metadata)}, expected a JSON "
                         "object of strings")
    entries = {name: _safetensors_entry(name, info, load) for name, info in header.items()}
    # The tensors tile the data section exactly: sorted by offset, from 0, no gap or overlap.
    end, size = 0, len(data) - body
    for name, (_, _, begin, stop) in sorted(entries.items(), key=lambda e: e[1][2:]):
        if begin != end:
            raise load.error(f"safetensors tensor {_describe(name)} starting at byte "
                             f"{_describe(begin)} of the data section, expected {_describe(end)} "
                             "(tensors must follow each other with no gap or overlap)",
                             "The file is corrupt.")
        end = stop
    if end != size:
        raise load.error(f"safetensors tensors covering {_describe(end)} bytes of a {size}-byte "
                         "data section", truncated if end > size else "The file is corrupt.")
    tensors = {}
    for name, (dtype_name, shape, begin, _) in entries.items():
        load.charge(_array_bytes(shape, _out_itemsize(dtype_name)),
                    f"safetensors tensor {_describe(name)}")
        raw = np.frombuffer(data, dtype=_TORCH_DTYPES[dtype_name], count=math.prod(shape),
                            offset=body + begin)
        tensors[name] = _finish_array(raw.reshape(shape), dtype_name)
    return tensors


# --- public API --------------------------------------------------------------------


def detect_format(path):
    """Returns "torch", "safetensors" or "caffe2", judged from the file's first bytes.

    A zip archive is torch's format; a pickle starting with torch's legacy magic number is
    torch's legacy format; an 8-byte length followed by a JSON object is safetensors; any
    other pickle is taken for Caffe2 (a pickle of NumPy arrays).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except OSError as error:
        raise _format_error(path, f"no readable file ({error.strerror})") from error
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "torch"
    if len(head) >= 10 and head[8:10] in (b'{"', b"{}"):
        return "safetensors"
    if head[:1] == pickle.PROTO:
        return "torch" if head[2:14] == _TORCH_LEGACY_HEAD else "caffe2"
    if head[:1] in (b"(", b"}", b"]", b"c"):  # protocol 0/1 pickles have no PROTO opcode
        return "caffe2"
    found = "an empty file" if size == 0 else f"unknown leading bytes {head[:16]!r}"
    raise _format_error(path, found)


def read_checkpoint(path, format=None, *, max_bytes=None):
    """Reads a checkpoint into a flat `{name: numpy.ndarray}` without running its code.

    Args:
        path: the checkpoint file.
        format: "torch", "safetensors" or "caffe2"; None detects it (`detect_format`).
        max_bytes: the most bytes this read may allocate for data (decompressed entries,
            the returned arrays); None: 4 x the file size + 16 MiB, enough for any honest
            checkpoint. A file that describes more is refused before anything is allocated.

    Torch files are unwrapped from `{"state_dict"|"model_state"|"model": ...}`, lose a
    DataParallel `module.` prefix and keep integer tensors (`num_batches_tracked`);
    bfloat16 comes back as float32, every other dtype as saved.

    Raises:
        UnsafeCheckpointError: a pickle names a global outside the format's allow-list, or
            tries to change the state of an object the reader gave it.
        CheckpointFormatError: the file is truncated, malformed, over the limits (see the
            module docstring) or of another format.
    """
    if format not in (None, *FORMATS):
        raise ValueError(f"Unknown checkpoint format {format!r}; expected one of {FORMATS} "
                         "or None.")
    file_format = format or detect_format(path)
    if max_bytes is None:
        try:
            max_bytes = _BUDGET_FACTOR * os.path.getsize(path) + _BUDGET_SLACK
        except OSError as error:
            raise _format_error(path, f"no readable file ({error.strerror})") from error
    load = _Load(path, max_bytes)
    if file_format == "safetensors":
        return _read_safetensors(load)
    if file_format == "caffe2":
        return _read_caffe2(load)
    with open(path, "rb") as f:
        is_zip = f.read(2) == b"PK"
    return _read_torch_zip(load) if is_zip else _read_torch_legacy(load)
