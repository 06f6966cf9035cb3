"""Label maps: download + cache of the Kinetics-400 names, decode_predictions, read_labels.

Downloads come from a local HTTP server on 127.0.0.1 serving the real label map from
../shared/data (never copied into the repository), with the URL and cache overridden.
"""

import doctest
import functools
import hashlib
import http.server
import socket
import threading
import time

import keras
import numpy as np
import pytest
from conftest import SHARED_DATA

from keras_r21d import presets
from keras_r21d.presets import labels
from keras_r21d.presets.labels import decode_predictions, kinetics400_labels, read_labels

KINETICS_FILE = SHARED_DATA / "labels" / "kinetics400.txt"
needs_shared = pytest.mark.skipif(not KINETICS_FILE.exists(),
                                  reason=f"real label map not found at {KINETICS_FILE}")


class _Files(http.server.BaseHTTPRequestHandler):
    def __init__(self, *args, files, **kwargs):
        self.files = files
        super().__init__(*args, **kwargs)

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """(base URL, {path: bytes} it serves, stop()) for a server on 127.0.0.1."""
    files = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_Files, files=files))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def stop():
        if thread.is_alive():
            httpd.shutdown()
            httpd.server_close()
            thread.join()

    yield f"http://127.0.0.1:{httpd.server_address[1]}", files, stop
    stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache root, also set as $KERAS_R21D_CACHE."""
    root = tmp_path / "cache"
    monkeypatch.setenv("KERAS_R21D_CACHE", str(root))
    return root


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_constants():
    assert labels.KINETICS400_URL == (
        "https://raw.githubusercontent.com/deepmind/kinetics-i3d/master/data/label_map.txt")
    assert labels.KINETICS400_SHA256 == (
        "e9f2806fe9109b851a80a74841244f6f8c9d10917fa0229cd82bab67f2f8e28f")


@needs_shared
def test_shared_file_has_the_published_hash():
    assert hashlib.sha256(KINETICS_FILE.read_bytes()).hexdigest() == labels.KINETICS400_SHA256


@needs_shared
def test_download_then_cache(server, cache, monkeypatch):
    base, files, stop = server
    files["/label_map.txt"] = KINETICS_FILE.read_bytes()
    monkeypatch.setattr(labels, "KINETICS400_URL", base + "/label_map.txt")
    names = kinetics400_labels()
    assert names == KINETICS_FILE.read_text().splitlines()
    assert len(names) == 400 and names[0] == "abseiling" and names[-1] == "zumba"
    cached = cache / labels.CACHE_SUBDIR / labels.KINETICS400_FILENAME
    assert cached.read_bytes() == files["/label_map.txt"]
    stop()  # the second call must not need the network
    assert kinetics400_labels() == names
    # decode_predictions names 400 classes by this list without being told.
    preds = np.zeros((1, 400), "float32")
    preds[0, 399] = 1.0
    assert decode_predictions(preds, top=1) == [[(399, "zumba", 1.0)]]


@needs_shared
def test_explicit_url_and_cache_dir_override_the_defaults(server, tmp_path, monkeypatch):
    base, files, _ = server
    files["/k400.txt"] = KINETICS_FILE.read_bytes()
    monkeypatch.setenv("KERAS_R21D_CACHE", str(tmp_path / "not_used"))
    names = kinetics400_labels(cache_dir=str(tmp_path / "mine"), url=base + "/k400.txt")
    assert len(names) == 400
    assert (tmp_path / "mine" / labels.CACHE_SUBDIR / labels.KINETICS400_FILENAME).exists()
    assert not (tmp_path / "not_used").exists()


def test_wrong_hash_is_explained_and_leaves_nothing(server, cache):
    base, files, _ = server
    files["/label_map.txt"] = b"abseiling\nair drumming\n"
    with pytest.raises(RuntimeError) as error:
        kinetics400_labels(url=base + "/label_map.txt")
    message = str(error.value)
    target = cache / labels.CACHE_SUBDIR / labels.KINETICS400_FILENAME
    assert "Hash mismatch" in message and hashlib.sha256(files["/label_map.txt"]).hexdigest() in message
    assert labels.KINETICS400_URL in message and labels.KINETICS400_SHA256 in message
    assert f"save it as {target}" in message
    assert not target.exists()
    assert [p.name for p in (cache / labels.CACHE_SUBDIR).iterdir() if not p.name.endswith(".lock")] == []


def test_unreachable_host_is_explained(cache):
    url = f"http://127.0.0.1:{_closed_port()}/label_map.txt"
    with pytest.raises(RuntimeError, match=r"Could not get the Kinetics-400 label map from "
                                           + url.replace(".", r"\.")) as error:
        kinetics400_labels(url=url)
    target = cache / labels.CACHE_SUBDIR / labels.KINETICS400_FILENAME
    assert "refused" in str(error.value).lower()
    assert f"save it as {target}" in str(error.value)
    assert not target.exists()


def test_missing_file_is_explained(server, cache):
    base, _, _ = server
    with pytest.raises(RuntimeError, match=r"404.*\n.*by hand"):
        kinetics400_labels(url=base + "/nothing.txt")


def test_concurrent_first_use_downloads_once(server, cache, monkeypatch):
    base, files, _ = server
    body = "".join(f"class {i}\n" for i in range(400)).encode()
    files["/label_map.txt"] = body
    monkeypatch.setattr(labels, "KINETICS400_SHA256", hashlib.sha256(body).hexdigest())
    calls, real = [], presets.download

    def slow_download(*args, **kwargs):  # long enough for every thread to ask meanwhile
        calls.append(args)
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(presets, "download", slow_download)
    results = []
    threads = [threading.Thread(target=lambda: results.append(kinetics400_labels(url=base + "/label_map.txt")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[f"class {i}" for i in range(400)]] * 4
    assert len(calls) == 1  # the others waited on the lock, then read the one cached file


def test_a_corrupt_cached_file_is_downloaded_again(server, cache, monkeypatch):
    base, files, _ = server
    body = "".join(f"class {i}\n" for i in range(400)).encode()
    files["/label_map.txt"] = body
    monkeypatch.setattr(labels, "KINETICS400_SHA256", hashlib.sha256(body).hexdigest())
    target = cache / labels.CACHE_SUBDIR / labels.KINETICS400_FILENAME
    target.parent.mkdir(parents=True)
    target.write_bytes(body[:100])  # e.g. an older version of the map, or a partial copy
    assert len(kinetics400_labels(url=base + "/label_map.txt")) == 400
    assert target.read_bytes() == body


@needs_shared
def test_file_placed_by_hand_is_used(cache):
    (cache / labels.CACHE_SUBDIR).mkdir(parents=True)
    (cache / labels.CACHE_SUBDIR / labels.KINETICS400_FILENAME).write_bytes(KINETICS_FILE.read_bytes())
    url = f"http://127.0.0.1:{_closed_port()}/label_map.txt"
    assert len(kinetics400_labels(url=url)) == 400


def test_decode_predictions_by_hand():
    preds = np.array([[0.1, 0.5, 0.2, 0.2],
                      [0.7, 0.05, 0.15, 0.1]], dtype="float32")
    names = ["a", "b", "c", "d"]
    got = decode_predictions(preds, top=3, labels=names)
    want = [[(1, "b", 0.5), (2, "c", 0.2), (3, "d", 0.2)],  # tie: lower index first
            [(0, "a", 0.7), (2, "c", 0.15), (3, "d", 0.1)]]
    assert [[(i, n) for i, n, _ in row] for row in got] == [[(i, n) for i, n, _ in row]
                                                            for row in want]
    np.testing.assert_allclose([[p for *_, p in row] for row in got],
                               [[p for *_, p in row] for row in want], rtol=1e-6)
    assert all(type(i) is int and type(p) is float for row in got for i, _, p in row)
    # A backend tensor works the same; `top` beyond the classes returns them all.
    assert decode_predictions(keras.ops.convert_to_tensor(preds), top=3, labels=names) == got
    assert len(decode_predictions(preds, top=10, labels=names)[0]) == 4
    assert decode_predictions(preds, labels=tuple(names))[1][0][:2] == (0, "a")


def test_decode_predictions_errors_say_what_is_needed():
    with pytest.raises(ValueError, match=r"shape \(batch, classes\); received shape \(4,\)"):
        decode_predictions(np.ones(4), labels=list("abcd"))
    with pytest.raises(ValueError, match=r"101 classes.*not Kinetics-400.*pass `labels=`"):
        decode_predictions(np.ones((2, 101)))
    with pytest.raises(ValueError, match=r"`labels` has 3 names but `preds` has shape \(2, 4\)"):
        decode_predictions(np.ones((2, 4)), labels=list("abc"))
    with pytest.raises(ValueError, match=r"`top` must be a positive int; received 0"):
        decode_predictions(np.ones((2, 4)), top=0, labels=list("abcd"))


def test_read_labels_tolerates_crlf_bom_and_trailing_lines(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes(b"\xef\xbb\xbfabseiling\r\n  air drumming \r\nzumba\r\n\r\n\n")
    assert read_labels(path) == ["abseiling", "air drumming", "zumba"]
    path.write_bytes(b"")
    assert read_labels(path) == []


def test_read_labels_rejects_an_empty_line_inside(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("a\n\nb\n")
    with pytest.raises(ValueError, match=r"Empty class name on line 2 of .*names\.txt"):
        read_labels(path)


@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"shared data not found at {SHARED_DATA}")
@pytest.mark.parametrize("name,count", [("ucf101.txt", 101), ("hmdb51.txt", 51),
                                        ("kinetics400.txt", 400)])
def test_read_labels_of_the_shared_label_maps(name, count):
    names = read_labels(SHARED_DATA / "labels" / name)
    assert len(names) == len(set(names)) == count


def test_docstring_examples():
    result = doctest.testmod(labels, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
