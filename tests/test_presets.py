"""Presets: the manifest, `weights=` resolution, origin downloads and the Hugging Face Hub.

Everything is served from 127.0.0.1 by the tests: a tiny R(2+1)D-18 written as a
torchvision-layout safetensors checkpoint (origin downloads), and a fake Hub speaking
the endpoints `huggingface_hub` uses (resolve, create repo, branch, preupload, commit).
"""

import base64
import hashlib
import http.server
import json
import re
import socket
import threading
import urllib.parse

import keras
import numpy as np
import pytest

import keras_r21d
from keras_r21d import presets
from keras_r21d.presets.convert import LAYOUTS, source_keys
from keras_r21d.presets.files import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE, read_metadata, save_preset

ARCH = "r2plus1d_18"
PAPER_NETWORKS = ["r2d_18", "fr2d_18", "r3d_18", "mc2_18", "mc3_18", "mc4_18", "mc5_18",
                  "rmc2_18", "rmc3_18", "rmc4_18", "rmc5_18", "r2plus1d_18"]
CLIP = np.random.default_rng(0).normal(size=(1, 4, 32, 32, 3)).astype("float32")


def tiny_model(seed):
    """A tiny R(2+1)D-18 shaped like torchvision's (per-block widths, eps 1e-5), random BN."""
    keras.utils.set_random_seed(seed)
    model = keras_r21d.get_model(ARCH, widths=(4, 8, 8, 16), stem_midplanes=3, classes=5,
                                 midplanes="per_block", bn_epsilon=1e-5, classifier_activation=None)
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if weight.path.endswith(("moving_mean", "beta")):
            weight.assign(rng.normal(0, 0.1, weight.shape).astype("float32"))
        elif weight.path.endswith(("moving_variance", "gamma")):
            weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))
    return model


def logits(model):
    return np.asarray(model.predict_on_batch(CLIP))


def load(weights):
    """The tiny network with `weights=` resolved by keras_r21d.presets, returning logits."""
    return keras_r21d.get_model(ARCH, weights=weights, classifier_activation=None)


def safetensors_bytes(model):
    """The model's weights under torchvision names, in PyTorch order, as a safetensors file."""
    keys = source_keys(model, "torchvision")
    header, blobs, offset = {}, [], 0
    for weight in model.weights:
        value = np.asarray(weight.numpy(), dtype="<f4")
        value = value.transpose(4, 3, 0, 1, 2) if value.ndim == 5 else value.T if value.ndim == 2 else value
        data = np.ascontiguousarray(value).tobytes()
        header[keys[weight.path]] = {"dtype": "F32", "shape": list(value.shape),
                                     "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model(seed=1)
    data = safetensors_bytes(model)
    return {"model": model, "logits": logits(model), "data": data,
            "sha256": hashlib.sha256(data).hexdigest()}


class Server:
    """A threaded HTTP server on 127.0.0.1 whose handler is a method of the test's choosing."""

    def __init__(self, handle):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                handle(self, "GET")

            def do_HEAD(self):
                handle(self, "HEAD")

            def do_POST(self):
                handle(self, "POST")

            def log_message(self, *args):
                pass

        self.requests = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()  # quick close

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(handler, status, body=b"", headers=(), length=None, method="GET"):
    handler.send_response(status)
    for key, value in headers:
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    if method != "HEAD":
        handler.wfile.write(body)
    if length is not None:
        handler.close_connection = True


@pytest.fixture
def origin(tiny):
    """Serves `/tiny.safetensors` (whole) and `/short.safetensors` (truncated)."""
    def handle(handler, method):
        server.requests.append(handler.path)
        if handler.path == "/tiny.safetensors":
            reply(handler, 200, tiny["data"], method=method)
        elif handler.path == "/short.safetensors":  # promises more bytes than it sends, then closes
            reply(handler, 200, tiny["data"][:1000], length=len(tiny["data"]), method=method)
        else:
            reply(handler, 404, b"not found", method=method)

    server = Server(handle)
    yield server
    server.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "cache"


def entry(url, name="tiny_k5", **origin):
    """A manifest entry for the tiny network at `url`."""
    return {
        "name": name, "architecture": ARCH, "aliases": ["tiny"], "frames": 4, "classes": 5,
        "labels": None, "hub": None,
        "origin": {"url": url, "filename": url.rsplit("/", 1)[-1], "format": "torchvision",
                   "sha256": None, "sha256_prefix": None, "checksum_note": "test", **origin},
        "preprocessing": {"resize": [128, 171], "crop": 112, "mean": [0.5] * 3, "std": [0.25] * 3},
        "accuracy": {"dataset": "none", "clip@1": None, "video@1": 1.0, "video@5": None, "protocol": "test"},
        "license": "test", "paper": "test", "source": "test",
    }


def use_manifest(monkeypatch, *entries):
    monkeypatch.setattr(presets, "_manifest", lambda: [dict(e) for e in entries])


def cache_files(cache):
    """The files in the cache, but the lock files that concurrent fetches take."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if p.is_file() and not p.name.endswith(".lock")) if cache.exists() else []


# ---------------------------------------------------------------- the shipped manifest

def test_manifest_covers_every_paper_network():
    entries = presets.list_presets()
    assert len(entries) == 33 and len({e["name"] for e in entries}) == 33
    kinetics = presets.pretrained_models("kinetics400")
    for name in PAPER_NETWORKS:
        assert kinetics[name] == [8, 16], name
    assert kinetics["r2plus1d_34"] == [32]
    assert presets.pretrained_models("ig65m") == {"r2plus1d_34": [8, 32]}
    assert presets.pretrained_models("ig65m_kinetics400") == {"r2plus1d_34": [8, 32]}
    assert [e["name"] for e in presets.list_presets("r2plus1d_18")] == [
        "r2plus1d_18_kinetics400_torchvision", "r2plus1d_18_kinetics400_caffe2_16f",
        "r2plus1d_18_kinetics400_caffe2_8f"]


def test_manifest_writes_the_kinetics_preprocessing_once():
    """REFERENCE section 4's numbers, in the manifest's defaults only; an entry may override them."""
    import importlib.resources

    raw = json.loads((importlib.resources.files("keras_r21d.weights") / "presets.json").read_text())
    kinetics = {"resize": [128, 171], "crop": 112, "mean": [0.43216, 0.394666, 0.37645],
                "std": [0.22803, 0.22145, 0.216989]}
    assert raw["defaults"] == {"preprocessing": kinetics}
    assert not any("preprocessing" in e for e in raw["presets"])
    own = {"resize": [64, 64], "crop": 56, "mean": [0.5] * 3, "std": [0.5] * 3}
    first, second = presets._entries({**raw, "presets": [raw["presets"][0], {**raw["presets"][1], "preprocessing": own}]})
    assert first["preprocessing"] == kinetics and second["preprocessing"] == own
    first["preprocessing"]["crop"] = 1  # entries do not share the defaults' dicts
    assert presets._entries(raw)[0]["preprocessing"]["crop"] == 112


def test_manifest_entries_are_consistent():
    registered = set(keras_r21d.list_models())
    preprocessing = {"resize": [128, 171], "crop": 112, "mean": [0.43216, 0.394666, 0.37645],
                     "std": [0.22803, 0.22145, 0.216989]}
    for e in presets.list_presets():
        origin = e["origin"]
        assert e["architecture"] in registered, e["name"]
        assert e["hub"] is None, f"{e['name']} names a Hub repo that was never published"
        assert origin["sha256"] is None, "no full digest of an upstream file is known"
        assert origin["format"] in LAYOUTS
        assert origin["filename"] == urllib.parse.urlparse(origin["url"]).path.rsplit("/", 1)[-1]
        assert e["preprocessing"] == preprocessing
        assert (e["labels"] == "kinetics400") == (e["classes"] == 400), e["name"]
        assert origin["checksum_note"] and e["license"] and e["accuracy"]["protocol"]
        if origin["format"] == "caffe2":
            assert origin["sha256_prefix"] is None and "No checksum" in origin["checksum_note"]
        else:  # torchvision / ig65m: the 8 hex of the file name, as torch.hub checks them
            hex_in_name = re.fullmatch(r".*-([0-9a-f]{8})\.pth", origin["filename"]).group(1)
            assert origin["sha256_prefix"] == hex_in_name, e["name"]
    assert presets.get_preset("r3d_18_kinetics400_torchvision")["origin"]["sha256_prefix"] == "b3b3357e"
    with pytest.raises(ValueError, match="Unknown preset 'nope'.*r3d_18_kinetics400_torchvision"):
        presets.get_preset("nope")


@pytest.mark.parametrize("weights, model, frames, expected", [
    ("kinetics400", "r2plus1d_18", None, "r2plus1d_18_kinetics400_torchvision"),
    ("kinetics400", "r2plus1d_18", 16, "r2plus1d_18_kinetics400_torchvision"),
    ("kinetics400", "r2plus1d_18", 8, "r2plus1d_18_kinetics400_caffe2_8f"),
    ("kinetics400", "mc4_18", 8, "mc4_18_kinetics400_caffe2_8f"),
    ("kinetics400", "mc4_18", None, "mc4_18_kinetics400_caffe2_16f"),
    ("kinetics400", "r2d_18", 8, "r2d_18_kinetics400_caffe2_8f"),
    ("kinetics400", "r2plus1d_34", None, "r2plus1d_34_kinetics400_caffe2_32f"),
    ("sports1m_kinetics400", "r2plus1d_34", 32, "r2plus1d_34_sports1m_kinetics400_caffe2_32f"),
    ("ig65m_kinetics400", "r2plus1d_34", 32, "r2plus1d_34_ig65m_kinetics400_32f"),
    ("ig65m", "r2plus1d_34", 8, "r2plus1d_34_ig65m_8f"),
    ("rmc3_18_kinetics400_caffe2_16f", "rmc3_18", 32, "rmc3_18_kinetics400_caffe2_16f"),
])
def test_aliases_and_names_pick_the_intended_preset(monkeypatch, weights, model, frames, expected):
    monkeypatch.setattr(presets, "fetch_preset", lambda name: name)
    assert presets.resolve_weights(weights, model, frames=frames) == expected


@pytest.mark.parametrize("weights, model, frames, message", [
    ("kinetics400", "mc4_18", 32, "mc4_18 has kinetics400 weights at 8 and 16 frames, not frames=32"),
    ("kinetics400", "r3d_34", None, "No 'kinetics400' weights for r3d_34; networks with"),
    ("imagenet", "mc4_18", None, "Unknown weights 'imagenet' for mc4_18.*Aliases: ig65m"),
    ("r3d_18_kinetics400_torchvision", "mc3_18", None, "holds r3d_18 weights, not mc3_18"),
    ("hf://no-slash", "mc3_18", None, "Expected 'hf://owner/repo'"),
])
def test_resolution_errors_say_what_exists(monkeypatch, weights, model, frames, message):
    monkeypatch.setattr(presets, "fetch_preset", lambda name: pytest.fail("must not fetch"))
    with pytest.raises(ValueError, match=message):
        presets.resolve_weights(weights, model, frames=frames)


def test_a_local_preset_directory_is_used_as_is(tmp_path, tiny):
    directory = save_preset(tiny["model"], tmp_path / "mine", {"labels": list("abcde")})
    assert presets.resolve_weights(str(directory), ARCH) == directory
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a preset directory"):
        presets.resolve_weights(str(tmp_path / "empty"), ARCH)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path))
    assert presets.cache_dir() == tmp_path
    monkeypatch.delenv(presets.CACHE_ENV)
    assert presets.cache_dir().parts[-2:] == (".keras", "keras_r21d")


# ---------------------------------------------------------------- origin downloads

def test_download_convert_cache_and_reuse_offline(monkeypatch, cache, origin, tiny):
    e = entry(f"{origin.url}/tiny.safetensors", sha256=tiny["sha256"])
    e["labels"] = "kinetics400"
    monkeypatch.setattr("keras_r21d.presets.labels.kinetics400_labels", lambda: [f"class {i}" for i in range(5)])
    use_manifest(monkeypatch, e)

    model = load("tiny")
    np.testing.assert_allclose(logits(model), tiny["logits"], atol=1e-5)
    directory = cache / "presets" / "tiny_k5"
    assert cache_files(cache) == [f"presets/tiny_k5/{f}" for f in (CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE)]
    metadata = read_metadata(directory)
    assert metadata["labels"] == [f"class {i}" for i in range(5)] and metadata["frames"] == 4
    assert metadata["source"]["url"] == e["origin"]["url"]
    assert metadata["source"]["sha256"] == tiny["sha256"] and metadata["source"]["format"] == "torchvision"
    assert metadata["preprocessing"] == e["preprocessing"] and metadata["accuracy"]["video@1"] == 1.0

    origin.close()  # reused from the cache: no network, also when offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert presets.resolve_weights("tiny_k5", ARCH) == directory
    assert origin.requests == ["/tiny.safetensors"]


def test_sha256_prefix_is_checked_and_no_checksum_is_logged(monkeypatch, cache, origin, tiny, caplog):
    url = f"{origin.url}/tiny.safetensors"
    use_manifest(monkeypatch, entry(url, "prefix", sha256_prefix=tiny["sha256"][:8]),
                 entry(url, "unchecked"))
    assert presets.fetch_preset("prefix").name == "prefix"
    with caplog.at_level("INFO", logger="keras_r21d"):
        assert presets.fetch_preset("unchecked").name == "unchecked"
    assert "No checksum was published" in caplog.text and "strict conversion" in caplog.text


@pytest.mark.parametrize("check", [{"sha256": "0" * 64}, {"sha256_prefix": "deadbeef"}])
def test_wrong_hash_is_refused_and_nothing_is_cached(monkeypatch, cache, origin, tiny, check):
    url = f"{origin.url}/tiny.safetensors"
    use_manifest(monkeypatch, entry(url, **check))
    with pytest.raises(presets.DownloadError) as error:
        presets.resolve_weights("tiny", ARCH)
    message = str(error.value)
    assert "Hash mismatch" in message and url in message and tiny["sha256"] in message
    assert next(iter(check.values())) in message and "keras-r21d convert" in message
    assert cache_files(cache) == []


def test_truncated_download_is_refused_and_nothing_is_cached(monkeypatch, cache, origin, tiny):
    url = f"{origin.url}/short.safetensors"
    use_manifest(monkeypatch, entry(url))
    with pytest.raises(presets.DownloadError, match=rf"Truncated download of {url}: received 1000 of "
                                                    rf"{len(tiny['data'])} bytes"):
        presets.fetch_preset("tiny_k5")
    assert cache_files(cache) == []


def test_unreachable_host_says_how_to_get_the_weights(monkeypatch, cache):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tiny.safetensors"
    use_manifest(monkeypatch, entry(url))
    with pytest.raises(presets.DownloadError) as error:
        presets.fetch_preset("tiny_k5")
    message = str(error.value)
    assert f"Could not download {url}" in message and "refused" in message.lower()
    assert str(cache / "downloads" / "tiny.safetensors") in message
    assert f"keras-r21d convert FILE -o DIR --arch {ARCH} --format torchvision" in message
    assert cache_files(cache) == []


def test_http_error_is_reported(monkeypatch, cache, origin):
    use_manifest(monkeypatch, entry(f"{origin.url}/gone.safetensors"))
    with pytest.raises(presets.DownloadError, match=r"gone.safetensors \(HTTP Error 404: Not Found\)"):
        presets.fetch_preset("tiny_k5")
    assert cache_files(cache) == []


def test_offline_without_cache_and_a_file_placed_by_hand(monkeypatch, cache, tiny):
    use_manifest(monkeypatch, entry("http://127.0.0.1:9/tiny.safetensors", sha256=tiny["sha256"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(presets.DownloadError, match="HF_HUB_OFFLINE is set.*To get it by hand"):
        presets.fetch_preset("tiny_k5")
    by_hand = cache / "downloads" / "tiny.safetensors"
    by_hand.parent.mkdir(parents=True, exist_ok=True)  # the lock file of the attempt is there
    by_hand.write_bytes(tiny["data"][:-4] + b"oops")  # a corrupt copy is refused and removed
    with pytest.raises(presets.DownloadError, match="Hash mismatch"):
        presets.fetch_preset("tiny_k5")
    assert not by_hand.exists()
    by_hand.write_bytes(tiny["data"])
    directory = presets.fetch_preset("tiny_k5")
    assert read_metadata(directory)["source"]["sha256"] == tiny["sha256"]


def test_a_failed_conversion_leaves_nothing(monkeypatch, cache, origin):
    use_manifest(monkeypatch, entry(f"{origin.url}/tiny.safetensors"))

    def broken(src, output_dir, **kwargs):
        (output_dir / CONFIG_FILE).write_text("{}")
        raise RuntimeError("interrupted")

    monkeypatch.setattr("keras_r21d.presets.convert.convert_checkpoint", broken)
    # Without a published checksum a file that does not convert is a bad download: removed too.
    with pytest.raises(presets.DownloadError, match="not a valid torchvision checkpoint.*interrupted.*removed"):
        presets.fetch_preset("tiny_k5")
    assert cache_files(cache) == []


# ---------------------------------------------------------------- the Hugging Face Hub

class FakeHub:
    """The Hub endpoints that hf_hub_download and HfApi.upload_folder use, in memory."""

    def __init__(self):
        self.commits, self.refs = {}, {}  # sha -> {path: bytes}; "repo@branch" -> sha
        self.server = Server(self.handle)
        self.url = self.server.url

    def handle(self, handler, method):
        self.server.requests.append(f"{method} {handler.path}")
        path = urllib.parse.urlparse(handler.path).path
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0)) if method == "POST" else b""
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo, rev, filename = m.group(1), urllib.parse.unquote(m.group(2)), m.group(3)
            sha = rev if rev in self.commits else self.refs.get(f"{repo}@{rev}")
            if sha is None:
                return reply(handler, 404, headers=[("X-Error-Code", "RevisionNotFound")], method=method)
            if filename not in self.commits[sha]:
                return reply(handler, 404, headers=[("X-Error-Code", "EntryNotFound"), ("X-Repo-Commit", sha)],
                             method=method)
            data = self.commits[sha][filename]
            return reply(handler, 200, data, method=method, headers=[
                ("X-Repo-Commit", sha), ("ETag", f'"{hashlib.sha256(data).hexdigest()}"')])
        if path == "/api/validate-yaml":  # the metadata check of a README.md that create_commit makes
            return reply(handler, 200, b'{"errors": [], "warnings": []}')
        if path == "/api/repos/create":
            payload = json.loads(body)
            return reply(handler, 200, json.dumps(
                {"url": f"{self.url}/{payload['organization']}/{payload['name']}"}).encode())
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/(.+)", path):
            self.refs.setdefault(f"{m.group(1)}@{m.group(2)}", self.refs.get(f"{m.group(1)}@main"))
            return reply(handler, 200, b"{}")
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path):
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                     for f in json.loads(body)["files"]]
            return reply(handler, 200, json.dumps({"files": files}).encode())
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path):
            ref = f"{m.group(1)}@{urllib.parse.unquote(m.group(2))}"
            files = dict(self.commits.get(self.refs.get(ref), {}))
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            sha = hashlib.sha1(repr(sorted(files.items())).encode() + ref.encode()).hexdigest()
            self.commits[sha], self.refs[ref] = files, sha
            return reply(handler, 200, json.dumps(
                {"commitOid": sha, "commitUrl": f"{self.url}/{m.group(1)}/commit/{sha}"}).encode())
        return reply(handler, 404, method=method)


@pytest.fixture
def hub(monkeypatch, tmp_path, cache):
    fake = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_XET_CACHE", str(tmp_path / "xet"))  # hf_xet's logs
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield fake
    fake.server.close()


@pytest.fixture
def pushed(hub, tmp_path, tiny):
    """Two revisions of one repo with different weights, pushed with push_to_hub."""
    second = tiny_model(seed=2)
    first_dir = save_preset(tiny["model"], tmp_path / "first", {"labels": list("abcde")})
    second_dir = save_preset(second, tmp_path / "second", {"labels": list("vwxyz")})
    first = presets.push_to_hub(first_dir, "me/tiny", token="hf_test")
    second_sha = presets.push_to_hub(second_dir, "me/tiny", token="hf_test", commit_message="retrain")
    assert first != second_sha and hub.refs["me/tiny@main"] == second_sha
    on_branch = presets.push_to_hub(first_dir, "me/tiny", revision="v1", token="hf_test")
    assert hub.refs["me/tiny@v1"] == on_branch and on_branch != second_sha
    sha256 = {f: hashlib.sha256((first_dir / f).read_bytes()).hexdigest() for f in presets.PRESET_FILES}
    return {"first": first, "second": second_sha, "second_logits": logits(second), "sha256": sha256}


def hub_entry(name, repo, revision, sha256):
    e = entry("http://127.0.0.1:9/unused.safetensors", name=name)
    e["hub"] = {"repo": repo, "revision": revision, "sha256": sha256}
    return e


def test_push_to_hub_and_load_pinned_revisions(hub, pushed, tiny):
    for weights, expected in ((f"hf://me/tiny@{pushed['first']}", tiny["logits"]),
                              (f"hf://me/tiny@{pushed['second']}", pushed["second_logits"]),
                              ("hf://me/tiny", pushed["second_logits"]),
                              ("hf://me/tiny@v1", tiny["logits"])):
        model = load(weights)
        np.testing.assert_allclose(logits(model), expected, atol=1e-5, err_msg=weights)
    directory = presets.resolve_weights(f"hf://me/tiny@{pushed['first']}", ARCH)
    assert directory.name == pushed["first"] and read_metadata(directory)["labels"] == list("abcde")
    with pytest.raises(presets.DownloadError, match="me/tiny@nope"):
        presets.resolve_weights("hf://me/tiny@nope", ARCH)


def test_manifest_hub_entry_is_pinned_and_checked(monkeypatch, hub, pushed, tiny, cache):
    use_manifest(monkeypatch, hub_entry("pinned", "me/tiny", pushed["first"], pushed["sha256"]))
    directory = presets.fetch_preset("pinned")
    assert directory == cache / "presets" / "pinned"
    model = load("pinned")
    np.testing.assert_allclose(logits(model), tiny["logits"], atol=1e-5)  # not main's newer weights


def test_manifest_hub_entry_with_a_wrong_sha256_caches_nothing(monkeypatch, hub, pushed, tmp_path, cache):
    wrong = {**pushed["sha256"], WEIGHTS_FILE: "f" * 64}
    use_manifest(monkeypatch, hub_entry("bad", "me/tiny", pushed["first"], wrong))
    with pytest.raises(presets.DownloadError) as error:
        presets.fetch_preset("bad")
    message = str(error.value)
    assert f"Hash mismatch for {WEIGHTS_FILE} of me/tiny@{pushed['first']}" in message
    assert "f" * 64 in message and pushed["sha256"][WEIGHTS_FILE] in message
    assert cache_files(cache) == []
    hf_files = [p.name for p in (tmp_path / "hf").rglob("*") if p.is_file() or p.is_symlink()]
    assert pushed["sha256"][WEIGHTS_FILE] not in hf_files and WEIGHTS_FILE not in hf_files


def test_hub_offline_with_and_without_a_cache(monkeypatch, hub, pushed, tmp_path, tiny):
    use_manifest(monkeypatch, hub_entry("pinned", "me/tiny", pushed["first"], pushed["sha256"]))
    presets.resolve_weights("hf://me/tiny", ARCH)  # fills the HF cache for main
    presets.fetch_preset("pinned")  # and for the pinned commit
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "fresh"))  # an empty preset cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = len(hub.server.requests)
    directory = presets.fetch_preset("pinned")  # rebuilt from the HF cache alone
    model = load("pinned")
    np.testing.assert_allclose(logits(model), tiny["logits"], atol=1e-5)
    assert presets.resolve_weights("hf://me/tiny", ARCH).name == pushed["second"]
    assert len(hub.server.requests) == seen and directory.is_dir()

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "fresh2"))
    for call in (lambda: presets.fetch_preset("pinned"),
                 lambda: presets.resolve_weights(f"hf://me/tiny@{pushed['first']}", ARCH)):
        with pytest.raises(presets.DownloadError, match="HF_HUB_OFFLINE.*To get it by hand: download "
                                                        "config.json, model.weights.h5, metadata.json"):
            call()
    assert cache_files(tmp_path / "fresh2") == []


def test_push_to_hub_refuses_a_folder_that_is_not_a_preset(tmp_path):
    with pytest.raises(ValueError, match="not a preset directory.*save_preset"):
        presets.push_to_hub(tmp_path, "me/tiny")
