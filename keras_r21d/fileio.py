"""Files written whole or not at all, and their digests: the one place for both.

A file is written under a temporary name of its own in the same folder and renamed over
the target once complete, so a reader (or a run resumed after a kill) sees the old file
or the new one, never half of one, and two writers never share a temporary file.
"""

import hashlib
import json
import os
import pathlib
import tempfile


def write_bytes(path, data):
    """Writes `data` (bytes) to `path` atomically."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide shared run folders and caches from others
        os.replace(tmp, path)
    finally:
        pathlib.Path(tmp).unlink(missing_ok=True)


def write_text(path, text):
    """Writes `text` to `path` atomically (UTF-8)."""
    write_bytes(path, text.encode())


def write_json(path, data):
    """Writes `data` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def sha256_of(path, chunk=1 << 20):
    """The sha256 hex digest of the file at `path`, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
