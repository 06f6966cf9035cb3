"""Downloads that go wrong: concurrent fetches, slow, truncated, garbage and oversized
transfers, bad Content-Length headers and Hub references that are not ones.

Every server runs on 127.0.0.1. The checkpoint is test_presets' tiny R(2+1)D-18 in
torchvision layout; expected bytes and digests are computed here with hashlib.
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest
from test_presets import Server, cache_files, entry, safetensors_bytes, tiny_model, use_manifest

from keras_r21d import presets
from keras_r21d.presets.files import CONFIG_FILE, WEIGHTS_FILE

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return safetensors_bytes(tiny_model(seed=1))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for env in (presets.TIMEOUT_ENV, presets.STALL_ENV, presets.MAX_BYTES_ENV):
        monkeypatch.delenv(env, raising=False)
    return tmp_path / "cache"


def send(handler, body=b"", headers=(("Content-Length", None),), pause=0.0, pieces=1):
    """A 200 reply; a Content-Length of None is the body's length. Sent in `pieces` with pauses."""
    try:
        handler.send_response(200)
        for key, value in headers:
            handler.send_header(key, str(len(body)) if value is None else value)
        handler.end_headers()
        step = max(1, -(-len(body) // pieces))
        for i in range(0, len(body), step):
            handler.wfile.write(body[i:i + step])
            handler.wfile.flush()
            time.sleep(pause)
    except OSError:  # the client gave up, as it should
        pass


@pytest.fixture
def server():
    """A server whose replies the test sets: `server.reply = lambda handler: ...`."""
    def handle(handler, method):
        srv.requests.append(handler.path)
        srv.reply(handler)

    srv = Server(handle)
    yield srv
    srv.close()


def downloads_left(cache):
    return [f for f in cache_files(cache) if f.startswith("downloads/")]


def sha256_files(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


# ---------------------------------------------------------------- two processes, one preset

WORKER = """
import json, logging, pathlib, sys, time
from keras_r21d import presets
entry, ready, go = json.loads(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
logging.basicConfig(level=logging.INFO)
presets._manifest = lambda: [entry]
ready.touch()
while not go.exists():  # both processes start fetching at the same moment
    time.sleep(0.01)
print(presets.fetch_preset(entry["name"]))
"""


def test_two_processes_fetch_one_preset(cache, server, data, tmp_path, monkeypatch):
    # Slow enough (about 1 s) that the second process asks while the first downloads.
    server.reply = lambda handler: send(handler, data, pause=0.1, pieces=10)
    e = entry(f"{server.url}/tiny.safetensors", sha256=hashlib.sha256(data).hexdigest())
    env = {**os.environ, presets.CACHE_ENV: str(cache), "KERAS_BACKEND": "tensorflow",
           "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    go = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(e), str(tmp_path / f"ready{i}"),
                                 str(go)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers), \
                [w.communicate() for w in workers]
            time.sleep(0.05)
        go.touch()
        results = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            w.kill()
    target = cache / "presets" / "tiny_k5"
    for w, (out, err) in zip(workers, results):
        assert w.returncode == 0, err[-3000:]
        assert out.strip().splitlines()[-1] == str(target)
    assert sum("Waiting for another process" in err for _, err in results) == 1  # the race happened
    assert server.requests == ["/tiny.safetensors"]  # the waiting one reused the first's preset
    assert cache_files(cache) == sorted(f"presets/tiny_k5/{f}" for f in presets.PRESET_FILES)

    # Bit for bit what one process alone caches.
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "alone"))
    use_manifest(monkeypatch, e)
    alone = presets.fetch_preset("tiny_k5")
    assert sha256_files(target) == sha256_files(alone)
    assert json.loads((target / "metadata.json").read_text())["source"]["sha256"] == \
        hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- time limits

def test_a_trickle_is_cut_at_the_deadline(cache, server, data, monkeypatch):
    # One byte every 0.2 s: each read succeeds, so only the deadline on the whole transfer stops it.
    server.reply = lambda handler: send(handler, data, pause=0.2, pieces=len(data))
    monkeypatch.setenv(presets.TIMEOUT_ENV, "1")
    use_manifest(monkeypatch, entry(f"{server.url}/tiny.safetensors"))
    start = time.monotonic()
    with pytest.raises(presets.DownloadError, match=rf"timed out: \d+ of {len(data)} bytes in \d+\.\d s, "
                                                    rf"over the 1 s limit.*{presets.TIMEOUT_ENV}.*by hand"):
        presets.fetch_preset("tiny_k5")
    assert time.monotonic() - start < 4
    assert cache_files(cache) == []


def test_a_silent_server_is_cut_at_the_stall_timeout(cache, server, tmp_path):
    server.reply = lambda handler: send(handler, b"x" * 10, headers=[("Content-Length", "1000")], pause=5)
    start = time.monotonic()
    with pytest.raises(presets.DownloadError, match=rf"no data for 0\.5 s after 10 bytes.*{presets.STALL_ENV}"):
        presets.download(f"{server.url}/f", tmp_path / "out" / "f", stall_timeout=0.5)
    assert time.monotonic() - start < 4
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf"])
def test_a_bad_limit_in_the_environment_is_explained(cache, monkeypatch, tmp_path, value):
    monkeypatch.setenv(presets.TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=rf"\${presets.TIMEOUT_ENV} must be a positive number; "
                                         rf"received '{value}'"):
        presets.download("http://127.0.0.1:9/f", tmp_path / "f")


# ---------------------------------------------------------------- bad bodies and headers

def test_truncated_or_garbage_without_length_is_removed_and_a_retry_succeeds(cache, server, data, monkeypatch):
    # No Content-Length and no checksum: only the strict conversion can tell.
    use_manifest(monkeypatch, entry(f"{server.url}/tiny.safetensors"))
    for body in (data[:len(data) // 2], bytes(len(data))):
        server.reply = lambda handler, body=body: send(handler, body, headers=())
        with pytest.raises(presets.DownloadError) as error:
            presets.fetch_preset("tiny_k5")
        message = str(error.value)
        assert f"({len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()})" in message
        assert "not a valid torchvision checkpoint" in message and "removed" in message
        assert "keras-r21d convert" in message
        assert cache_files(cache) == []  # nothing left to poison the retry

    server.reply = lambda handler: send(handler, data, headers=())
    directory = presets.fetch_preset("tiny_k5")
    assert json.loads((directory / "metadata.json").read_text())["source"]["sha256"] == \
        hashlib.sha256(data).hexdigest()
    assert server.requests == ["/tiny.safetensors"] * 3
    assert cache_files(cache) == sorted(f"presets/tiny_k5/{f}" for f in presets.PRESET_FILES)


@pytest.mark.parametrize("lengths", [["abc"], ["-5"], ["1e3"], [""], ["10", "20"], ["²"]])
def test_invalid_content_length_is_explained(cache, server, tmp_path, lengths):
    server.reply = lambda handler: send(handler, b"x" * 10, headers=[("Content-Length", v) for v in lengths])
    shown = ", ".join(repr(v) for v in lengths)
    with pytest.raises(presets.DownloadError, match=rf"invalid Content-Length header \({shown}\), expected "
                                                    r"one byte count; nothing was written"):
        presets.download(f"{server.url}/f", tmp_path / "out" / "f")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("announced", [True, False])
def test_oversize_is_refused(cache, server, tmp_path, monkeypatch, announced):
    body = b"x" * 5000
    server.reply = lambda handler: send(handler, body, headers=[("Content-Length", None)] if announced else ())
    monkeypatch.setenv(presets.MAX_BYTES_ENV, "1000")
    why = "the server announces 5000 bytes" if announced else "more than 1000 bytes were received"
    with pytest.raises(presets.DownloadError, match=rf"too large: {why}, more than the 1000-byte limit.*"
                                                    rf"{presets.MAX_BYTES_ENV}"):
        presets.download(f"{server.url}/f", tmp_path / "out" / "f")
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.delenv(presets.MAX_BYTES_ENV)  # the default cap lets it through
    assert presets.download(f"{server.url}/f", tmp_path / "out" / "f").read_bytes() == body


def test_the_manifest_size_is_the_cap_and_must_match(cache, server, data, monkeypatch):
    server.reply = lambda handler: send(handler, data)
    url = f"{server.url}/tiny.safetensors"
    use_manifest(monkeypatch, entry(url, "small", size=len(data) - 1), entry(url, "large", size=len(data) + 1))
    with pytest.raises(presets.DownloadError, match=rf"announces {len(data)} bytes, more than the "
                                                    rf"{len(data) - 1}-byte limit"):
        presets.fetch_preset("small")
    with pytest.raises(presets.DownloadError, match=rf"received {len(data)} bytes, expected {len(data) + 1} "
                                                    r"\(the manifest's size\)"):
        presets.fetch_preset("large")
    assert cache_files(cache) == []


def test_the_kept_file_is_what_was_hashed(cache, server, data, tmp_path):
    server.reply = lambda handler: send(handler, data, pieces=7)
    dest = presets.download(f"{server.url}/f", tmp_path / "f", sha256=hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    assert oct(dest.stat().st_mode & 0o777) == oct(0o644)


# ---------------------------------------------------------------- Hub references

@pytest.fixture
def no_network(monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        pytest.fail(f"a request was made: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "HfApi", refuse)


@pytest.mark.parametrize("uri, message", [
    ("hf://me/tiny@../../../../tmp/x", "revision '../../../../tmp/x'"),
    ("hf://me/tiny@v1/../../x", "revision 'v1/../../x'"),
    ("hf://me/tiny@/etc", "revision '/etc'"),
    ("hf://me/tiny@main/", "revision 'main/'"),
    ("hf://me/tiny@a//b", "revision 'a//b'"),
    ("hf://me/tiny@..", r"revision '\.\.'"),
    ("hf://me/tiny@.hidden", r"revision '\.hidden'"),
    ("hf://me/tiny@-x", "revision '-x'"),
    ("hf://me/tiny@x.lock", r"revision 'x\.lock'"),
    ("hf://me/tiny@a\\b", r"revision 'a\\\\b'"),
    ("hf://me/tiny@ma\nin", r"revision 'ma\\nin'"),
    ("hf://me/tiny@ma in", "revision 'ma in'"),
    ("hf://me/tiny@a~1", "revision 'a~1'"),
    ("hf://me/tiny@" + "a" * 256, "revision 'aaaa"),
    ("hf://../tiny", r"repo id '\.\./tiny'"),
    ("hf://me/ti..ny", r"repo id 'me/ti\.\.ny'"),
    ("hf://me/-tiny", "repo id 'me/-tiny'"),
    ("hf://me/tiny.git", r"repo id 'me/tiny\.git'"),
    ("hf://m\u00e9/tiny", "repo id"),
])
def test_bad_hub_references_are_refused_before_any_request(no_network, uri, message):
    with pytest.raises(ValueError, match=rf"Invalid Hub {message}.* in '"):
        presets.resolve_weights(uri, "r2plus1d_18")


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", "release_2", "a" * 40])
def test_good_hub_references_are_requested(monkeypatch, revision):
    import huggingface_hub

    asked = []

    def record(repo_id, filename, revision=None, **kwargs):
        asked.append((repo_id, filename, revision))
        raise OSError("no network in this test")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", record)
    with pytest.raises(presets.DownloadError, match="no network in this test"):
        presets.resolve_weights(f"hf://me/tiny@{revision}", "r2plus1d_18")
    assert asked == [("me/tiny", CONFIG_FILE, revision)]


def test_push_to_hub_checks_the_repo_and_revision_first(no_network, tmp_path):
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        (tmp_path / name).write_text("{}")
    with pytest.raises(ValueError, match="Invalid Hub revision '../x'"):
        presets.push_to_hub(tmp_path, "me/tiny", revision="../x")
    with pytest.raises(ValueError, match="Invalid Hub repo id 'me/a/b'"):
        presets.push_to_hub(tmp_path, "me/a/b")


def test_a_manifest_hub_entry_is_checked_too(no_network, cache, monkeypatch):
    e = entry("http://127.0.0.1:9/unused.safetensors", name="bad_hub")
    e["hub"] = {"repo": "me/tiny", "revision": "../escape", "sha256": {f: "0" * 64 for f in presets.PRESET_FILES}}
    use_manifest(monkeypatch, e)
    with pytest.raises(ValueError, match="Invalid Hub revision '../escape'"):
        presets.fetch_preset("bad_hub")
    assert cache_files(cache) == []


# ---------------------------------------------------------------- threads, too

def test_threads_share_one_download(cache, server, data):
    server.reply = lambda handler: send(handler, data, pause=0.05, pieces=10)
    errors, paths = [], []

    def fetch():
        try:
            paths.append(presets.download(f"{server.url}/f", cache / "f",
                                          sha256=hashlib.sha256(data).hexdigest()))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Without a lock each thread downloads, but to a file of its own: the one kept is whole.
    assert errors == [] and len(paths) == 3
    assert (cache / "f").read_bytes() == data and sorted(p.name for p in cache.iterdir()) == ["f"]


def test_a_chunked_reply_cut_inside_a_chunk_is_refused(cache, server, tmp_path):
    def cut(handler):
        handler.protocol_version = "HTTP/1.1"
        send(handler, b"", headers=[("Transfer-Encoding", "chunked")])
        handler.wfile.write(b"a\r\n0123456789\r\n64\r\nonly a few")  # 10 bytes, then 100 promised
        handler.close_connection = True

    server.reply = cut
    with pytest.raises(presets.DownloadError, match=r"Truncated download of .*/f: received \d+ of more than"):
        presets.download(f"{server.url}/f", tmp_path / "out" / "f")
    assert list((tmp_path / "out").iterdir()) == []
