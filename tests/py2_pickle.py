"""Writes pickles the way Python 2's cPickle (protocol 2) wrote the Caffe2 release's
NumPy blobs: strings as BINSTRING, arrays through numpy.core.multiarray._reconstruct."""

import io
import pickle
import struct

import numpy as np


def _string(out, value):
    data = value if isinstance(value, bytes) else value.encode("latin1")
    if len(data) < 256:
        out.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
    else:
        out.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)


def _global(out, module, name):
    out.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())


def _tuple(out, items):
    out.write(pickle.MARK)
    for item in items:
        _write(out, item)
    out.write(pickle.TUPLE)


def _array(out, array):
    array = np.ascontiguousarray(array)
    _global(out, "numpy.core.multiarray", "_reconstruct")
    _tuple(out, [("global", "numpy", "ndarray"), (0,), b"b"])
    out.write(pickle.REDUCE)
    dtype_code = array.dtype.str[1:]  # e.g. "f4"
    state_dtype = ("dtype", dtype_code, "<" if array.dtype.itemsize > 1 else "|")
    _tuple(out, [1, tuple(array.shape), state_dtype, False, array.tobytes()])
    out.write(pickle.BUILD)


def _write(out, obj):
    if isinstance(obj, tuple) and len(obj) == 3 and obj[0] == "global":
        _global(out, obj[1], obj[2])
    elif isinstance(obj, tuple) and len(obj) == 3 and obj[0] == "dtype":
        _global(out, "numpy", "dtype")
        _tuple(out, [obj[1], 0, 1])
        out.write(pickle.REDUCE)
        _tuple(out, [3, obj[2], None, None, None, -1, -1, 0])
        out.write(pickle.BUILD)
    elif isinstance(obj, np.ndarray):
        _array(out, obj)
    elif isinstance(obj, dict):
        out.write(pickle.EMPTY_DICT)
        for key, value in obj.items():
            out.write(pickle.MARK)
            _write(out, key)
            _write(out, value)
            out.write(pickle.SETITEMS)
    elif isinstance(obj, tuple):
        _tuple(out, obj)
    elif isinstance(obj, bool):
        out.write(pickle.NEWTRUE if obj else pickle.NEWFALSE)
    elif isinstance(obj, int):
        out.write(pickle.BININT + struct.pack("<i", obj))
    elif obj is None:
        out.write(pickle.NONE)
    elif isinstance(obj, (str, bytes)):
        _string(out, obj)
    else:
        raise TypeError(f"py2_pickle cannot write {type(obj)}")


def dumps(obj):
    out = io.BytesIO()
    out.write(pickle.PROTO + bytes([2]))
    _write(out, obj)
    out.write(pickle.STOP)
    return out.getvalue()


def dump(obj, path):
    with open(path, "wb") as f:
        f.write(dumps(obj))
