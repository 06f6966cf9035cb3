"""Files are written whole or not at all; digests equal hashlib's over the whole file."""

import hashlib
import json
import os

import pytest

from keras_r21d import fileio


def test_write_json_replaces_the_file_whole(tmp_path):
    path = tmp_path / "state.json"
    fileio.write_json(path, {"step": 1})
    fileio.write_json(path, {"step": 2})
    assert json.loads(path.read_text()) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    fileio.write_json(path, {"step": 1})

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        fileio.write_json(path, {"step": 2})
    assert json.loads(path.read_text()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_sha256_of_reads_the_whole_file_in_chunks(tmp_path):
    data = os.urandom(3 * 1000 + 7)
    (tmp_path / "blob").write_bytes(data)
    assert fileio.sha256_of(tmp_path / "blob", chunk=1000) == hashlib.sha256(data).hexdigest()
