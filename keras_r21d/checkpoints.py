"""Read PyTorch, safetensors and Caffe2 checkpoints into `{name: numpy array}`.

Checkpoints are pickles, and unpickling calls whatever functions the file names, so a
downloaded `.pth` or `.pkl` can run any code when loaded with `torch.load(weights_only=False)`
or `pickle.load`. This module never imports torch and never lets a pickle call anything but
a short allow-list per format: `_RestrictedUnpickler.find_class` maps each allowed global
to a local NumPy re-implementation (torch's rebuild functions, storage types) or to a
harmless NumPy constructor, and refuses every other global before anything is called.

Formats (detected from the file's bytes, not its extension):
    "torch": `torch.save` output, the zip format (`<top>/data.pkl` + `<top>/data/<key>`)
        and the legacy pre-1.6 stream (magic number, protocol, sys_info, object pickle,
        storage keys, raw storages).
    "safetensors": 8-byte little-endian header length, JSON header, raw tensor bytes.
    "caffe2": a pickle of NumPy arrays, as the VMZ / R2Plus1D release wrote them
        (Python 2 cPickle of `dict(blobs={name: array})` or a bare `{name: array}`).
"""

import collections
import io
import json
import os
import pickle
import struct
import zipfile

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
_WRAPPER_KEYS = ("state_dict", "model_state", "model")
_SCALARS = (str, bytes, int, float, bool, type(None))


class UnsafeCheckpointError(ValueError):
    """A checkpoint's pickle names a global outside the allow-list of its format."""


class CheckpointFormatError(ValueError):
    """A checkpoint is unreadable, truncated or of no supported format."""


def _format_error(path, found, fix=None):
    message = f"Cannot read checkpoint {os.fspath(path)!r}: {found}; {_SUPPORTED}."
    return CheckpointFormatError(message + (f" {fix}" if fix else ""))


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


def _finish_array(raw, dtype_name):
    """Returns a standalone array in native byte order; bfloat16 bits become float32."""
    if dtype_name == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return np.array(raw, dtype=raw.dtype.newbyteorder("="))


# --- restricted unpickling ----------------------------------------------------------


class _RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` returns only the values in `allowed`.

    `allowed` maps `(module, name)` to what the pickle gets instead of the real global.
    Any other global raises `UnsafeCheckpointError` before anything is called: pickles
    can only call what `find_class` hands out (REDUCE, NEWOBJ, INST, OBJ, EXT* all go
    through it), so nothing outside the table ever runs.
    """

    def __init__(self, file, path, allowed, persistent_load=None, **kwargs):
        super().__init__(file, **kwargs)
        self._path = path
        self._allowed = allowed
        self._persistent = persistent_load

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"Refused to load checkpoint {os.fspath(self._path)!r}: its pickle references "
                f"the global {module}.{name}, which is not on the allow-list for this format. "
                "The checkpoint was not loaded, because loading it could run code. If you "
                "trust the file, load it with torch and re-save only its state dict "
                "(torch.save(model.state_dict(), path)) or as safetensors."
            ) from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise pickle.UnpicklingError("persistent ids are not used by this format")
        return self._persistent(pid)


def _unpickle(file, path, allowed, persistent_load=None, **kwargs):
    """Runs one restricted unpickling; any failure but refusal is a format error."""
    try:
        return _RestrictedUnpickler(file, path, allowed, persistent_load, **kwargs).load()
    except (UnsafeCheckpointError, CheckpointFormatError):
        raise
    except Exception as error:  # truncated or malformed pickles raise almost anything
        raise _format_error(path, f"a malformed pickle ({type(error).__name__}: {error})",
                            "The file may be truncated: download it again.") from error


# --- torch -------------------------------------------------------------------------


class _StorageRef:
    """A storage named by a torch persistent id; its bytes are attached after unpickling."""

    def __init__(self, key, dtype_name):
        self.key, self.dtype_name = key, dtype_name


class _TensorRef:
    """What a torch rebuild function returns: a strided view into a `_StorageRef`."""

    def __init__(self, storage, offset, shape, stride, dtype_name=None):
        self.storage, self.offset = storage, int(offset)
        self.dtype_name = dtype_name or storage.dtype_name
        self.shape, self.stride = tuple(int(s) for s in shape), tuple(int(s) for s in stride)


class _TorchMarker:
    """Stands in for a torch storage class or dtype object; not callable."""

    def __init__(self, dtype_name):
        self.dtype_name = dtype_name


def _rebuild_tensor(storage, offset, shape, stride, *_ignored):
    # v1 (storage, offset, size, stride) and v2 (+ requires_grad, backward_hooks[, metadata]).
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(f"a tensor rebuilt from a {type(storage).__name__}")
    return _TensorRef(storage, offset, shape, stride)


def _rebuild_tensor_v3(storage, offset, shape, stride, requires_grad, hooks, dtype, *_meta):
    # Dtypes without a legacy storage class pickle an UntypedStorage plus a dtype object.
    if not isinstance(dtype, _TorchMarker):
        raise pickle.UnpicklingError(f"a tensor of dtype {type(dtype).__name__}")
    tensor = _rebuild_tensor(storage, offset, shape, stride)
    tensor.dtype_name = dtype.dtype_name
    return tensor


def _rebuild_parameter(data, *_ignored):
    return data


def _torch_size(dims=()):
    return tuple(dims)


def _torch_allowed():
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): _torch_size,
        ("torch.storage", "UntypedStorage"): _TorchMarker("uint8"),
    }
    for storage, dtype_name in _TORCH_STORAGES.items():
        allowed[("torch", storage)] = _TorchMarker(dtype_name)
    for dtype_name in (*_TORCH_DTYPES, *_TORCH_DTYPE_ALIASES):
        allowed[("torch", dtype_name)] = _TorchMarker(
            _TORCH_DTYPE_ALIASES.get(dtype_name, dtype_name))
    return allowed


_TORCH_ALLOWED = _torch_allowed()


def _storage_ref(pid, path):
    """Persistent id `('storage', type, key, location, numel[, view_metadata])`."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _TorchMarker)):
        raise _format_error(path, f"an unknown torch persistent id {pid!r:.200}")
    if len(pid) > 5 and pid[5] is not None:
        raise _format_error(path, "a pre-0.4 torch storage view",
                            "Re-save it with a current PyTorch.")
    return _StorageRef(str(pid[2]), pid[1].dtype_name)


def _tensor_array(ref, raw_bytes, path, name):
    """Materialises a `_TensorRef` from its storage's raw bytes, checking the bounds."""
    dtype_name = ref.dtype_name
    dtype = np.dtype(_TORCH_DTYPES[dtype_name])
    storage = np.frombuffer(raw_bytes, dtype=dtype, count=len(raw_bytes) // dtype.itemsize)
    if len(ref.shape) != len(ref.stride) or ref.offset < 0 or min(ref.stride, default=0) < 0:
        raise _format_error(path, f"tensor {name!r} with shape {ref.shape}, stride {ref.stride}")
    if 0 in ref.shape:
        return _finish_array(np.empty(ref.shape, storage.dtype), dtype_name)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if last >= storage.size:
        raise _format_error(
            path, f"tensor {name!r} reaching element {last} of a storage of {storage.size}",
            "The file is truncated or corrupt: download it again.")
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset:], shape=ref.shape,
        strides=[s * storage.itemsize for s in ref.stride], writeable=False)
    return _finish_array(view, dtype_name)


def _read_torch_zip(path):
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise _format_error(path, f"a zip archive without a single */data.pkl "
                                          f"(entries: {names[:8]})")
            top = pickles[0][: -len("data.pkl")]
            obj = _unpickle(io.BytesIO(archive.read(pickles[0])), path, _TORCH_ALLOWED,
                            lambda pid: _storage_ref(pid, path))

            def storage_bytes(key):
                try:
                    return archive.read(f"{top}data/{key}")
                except KeyError:
                    raise _format_error(path, f"no storage entry {top}data/{key}") from None

            return _torch_state_dict(obj, storage_bytes, path)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise _format_error(path, f"a damaged zip archive ({error})",
                            "The file may be truncated: download it again.") from error


def _read_torch_legacy(path):
    with open(path, "rb") as f:
        magic = _unpickle(f, path, {})
        if magic != _TORCH_LEGACY_MAGIC:
            raise _format_error(path, "a pickle without torch's legacy magic number")
        _unpickle(f, path, {})  # protocol version
        sys_info = _unpickle(f, path, {})
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise _format_error(path, "a big-endian legacy torch file")
        storage_dtypes = {}

        def persistent_load(pid):
            ref = _storage_ref(pid, path)
            storage_dtypes[ref.key] = ref.dtype_name
            return ref

        obj = _unpickle(f, path, _TORCH_ALLOWED, persistent_load, encoding="latin1")
        keys = _unpickle(f, path, {})
        # Then, per key in that order: int64 little-endian element count, raw elements.
        data = {}
        for key in keys if isinstance(keys, list) else ():
            key = str(key)
            header = f.read(8)
            itemsize = np.dtype(_TORCH_DTYPES[storage_dtypes.get(key, "uint8")]).itemsize
            nbytes = struct.unpack("<q", header)[0] * itemsize if len(header) == 8 else -1
            data[key] = f.read(max(nbytes, 0))
            if nbytes < 0 or len(data[key]) != nbytes:
                raise _format_error(path, f"a legacy torch file truncated in storage {key}",
                                    "Download it again.")

    def storage_bytes(key):
        if key not in data:
            raise _format_error(path, f"no data for storage {key}")
        return data[key]

    return _torch_state_dict(obj, storage_bytes, path)


def _torch_state_dict(obj, storage_bytes, path):
    """Unwraps `{"state_dict": ...}`-style wrappers, flattens, strips `module.`."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPER_KEYS
                      if isinstance(obj.get(k), dict) and obj[k] is not obj), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise _format_error(path, f"a torch file holding a {type(obj).__name__}, "
                                  "not a state dict of tensors")
    cache, tensors = {}, {}
    for name, value in _flatten(obj, "", path):
        if not isinstance(value, _TensorRef):
            continue  # plain scalars (epoch, version...)
        key = value.storage.key
        if key not in cache:
            cache[key] = storage_bytes(key)
        name = name[len("module."):] if name.startswith("module.") else name
        if name in tensors:
            raise _format_error(path, f"two tensors named {name!r} once 'module.' is removed")
        tensors[name] = _tensor_array(value, cache[key], path, name)
    return tensors


def _flatten(obj, prefix, path):
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}.", path)
        elif isinstance(value, (_TensorRef, *_SCALARS)):
            yield name, value
        else:
            raise _format_error(
                path, f"entry {name!r} of type {type(value).__name__} among the tensors",
                f"Expected a state dict of tensors, bare or under one of {_WRAPPER_KEYS}.")


# --- caffe2 ------------------------------------------------------------------------


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    # Protocol <= 2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} refused")
    return text.encode("latin1", errors)


def _frombuffer(buffer, dtype, shape, order):
    # NumPy's protocol-5 array reduce; a copy, so nothing aliases the pickle's bytes.
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).copy()


def _caffe2_allowed():
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1
        from numpy.core import multiarray

    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _codecs_encode}
    for core in ("numpy.core", "numpy._core"):  # NumPy 1 / NumPy 2 spellings
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return allowed


def _read_caffe2(path):
    with open(path, "rb") as f:
        obj = _unpickle(f, path, _caffe2_allowed(), encoding="latin1")
    blobs = obj.get("blobs", obj.get(b"blobs")) if isinstance(obj, dict) else None
    obj = blobs if isinstance(blobs, dict) else obj
    if not isinstance(obj, dict):
        raise _format_error(path, f"a pickle of a {type(obj).__name__}, not a dict of arrays")
    arrays = {}
    for name, value in obj.items():
        name = name.decode("latin1") if isinstance(name, bytes) else str(name)
        if isinstance(value, np.ndarray) and value.dtype != object:
            arrays[name] = np.array(value, dtype=value.dtype.newbyteorder("="))
        elif not isinstance(value, (str, bytes, int, float)):
            raise _format_error(path, f"blob {name!r} of type {type(value).__name__}, "
                                      "expected NumPy arrays")
    return arrays


# --- safetensors -------------------------------------------------------------------


def _read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise _format_error(path, f"{len(data)} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", data[:8])
    body = 8 + header_len
    if body > len(data):
        raise _format_error(path, f"a safetensors header of {header_len} bytes in a file of "
                                  f"{len(data)}", "The file is truncated: download it again.")
    try:
        header = json.loads(data[8:body])
    except ValueError as error:
        raise _format_error(path, f"a safetensors header that is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise _format_error(path, "a safetensors header that is not a JSON object")
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(n) for n in info["shape"])
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _format_error(
                path, f"safetensors entry {name!r} = {info!r:.200}",
                f"Supported dtypes: {', '.join(_SAFETENSORS_DTYPES)}.") from None
        dtype = np.dtype(_TORCH_DTYPES[dtype_name])
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= len(data) - body or end - begin != count * dtype.itemsize:
            raise _format_error(
                path, f"safetensors tensor {name!r} at bytes [{begin}, {end}) of a "
                      f"{len(data) - body}-byte data section, needing {count * dtype.itemsize}",
                "The file is truncated or corrupt: download it again.")
        raw = np.frombuffer(data, dtype=dtype, count=count, offset=body + begin)
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
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "torch"
    if len(head) >= 10 and head[8:10] in (b'{"', b"{}"):
        return "safetensors"
    if head[:1] == pickle.PROTO:
        # torch.save's legacy stream opens with the pickled magic number (LONG1 opcode).
        if head[2:3] == b"\x8a" and head[4 : 4 + head[3]] == _TORCH_LEGACY_MAGIC.to_bytes(
                head[3], "little"):
            return "torch"
        return "caffe2"
    if head[:1] in (b"(", b"}", b"]", b"c"):  # protocol 0/1 pickles have no PROTO opcode
        return "caffe2"
    found = "an empty file" if size == 0 else f"unknown leading bytes {head[:16]!r}"
    raise _format_error(path, found)


def read_checkpoint(path, format=None):
    """Reads a checkpoint into a flat `{name: numpy.ndarray}` without running its code.

    Args:
        path: the checkpoint file.
        format: "torch", "safetensors" or "caffe2"; None detects it (`detect_format`).

    Torch files are unwrapped from `{"state_dict"|"model_state"|"model": ...}`, lose a
    DataParallel `module.` prefix and keep integer tensors (`num_batches_tracked`);
    bfloat16 comes back as float32, every other dtype as saved.

    Raises:
        UnsafeCheckpointError: a pickle names a global outside the format's allow-list.
        CheckpointFormatError: the file is truncated, malformed or of another format.
    """
    file_format = format or detect_format(path)
    if file_format == "safetensors":
        return _read_safetensors(path)
    if file_format == "caffe2":
        return _read_caffe2(path)
    if file_format == "torch":
        with open(path, "rb") as f:
            is_zip = f.read(2) == b"PK"
        if is_zip:
            return _read_torch_zip(path)
        return _read_torch_legacy(path)
    raise ValueError(f"Unknown checkpoint format {format!r}; expected one of {FORMATS} or None.")
