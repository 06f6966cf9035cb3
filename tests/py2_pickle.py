"""Writes pickles the way Python 2's cPickle (protocol 2) wrote the Caffe2 release's
NumPy blobs: strings as BINSTRING, arrays through numpy.core.multiarray._reconstruct."""

import io
import pickle
import struct

import numpy as np


class Py2Pickler:
    """Protocol 2 the way Python 2's cPickle wrote NumPy arrays: `str` as BINSTRING /
    SHORT_BINSTRING, arrays through numpy.core.multiarray._reconstruct + BUILD."""

    def __init__(self):
        self.out = io.BytesIO()

    def dumps(self, obj):
        self.out.write(pickle.PROTO + b"\x02")
        self.write(obj)
        self.out.write(pickle.STOP)
        return self.out.getvalue()

    def string(self, data):
        data = data.encode("latin1") if isinstance(data, str) else data
        if len(data) < 256:
            self.out.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.out.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    def tuple(self, items):
        self.out.write(pickle.MARK)
        for item in items:
            self.write(item)
        self.out.write(pickle.TUPLE)

    def write(self, obj):
        w = self.out.write
        if isinstance(obj, np.ndarray):
            w(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            w(pickle.MARK + pickle.GLOBAL + b"numpy\nndarray\n")
            self.tuple([0])
            self.string("b")
            w(pickle.TUPLE + pickle.REDUCE)
            w(pickle.MARK)
            self.write(1)
            self.tuple(list(obj.shape))
            w(pickle.GLOBAL + b"numpy\ndtype\n")
            self.tuple([obj.dtype.str[1:], 0, 1])
            w(pickle.REDUCE)
            self.tuple([3, obj.dtype.str[0], None, None, None, -1, -1, 0])
            w(pickle.BUILD)
            w(pickle.NEWFALSE)
            self.string(np.ascontiguousarray(obj).tobytes())
            w(pickle.TUPLE + pickle.BUILD)
        elif isinstance(obj, dict):
            w(pickle.EMPTY_DICT + pickle.MARK)
            for key, value in obj.items():
                self.write(key)
                self.write(value)
            w(pickle.SETITEMS)
        elif obj is None:
            w(pickle.NONE)
        elif isinstance(obj, int):
            w(pickle.BININT + struct.pack("<i", obj))
        elif isinstance(obj, (str, bytes)):
            self.string(obj)
        else:
            raise TypeError(obj)


def dumps(obj):
    return Py2Pickler().dumps(obj)


def dump(obj, path):
    with open(path, "wb") as f:
        f.write(dumps(obj))
