"""Pretrained presets: the manifest, downloads with hash checks, the cache and the Hub.

The manifest (`weights/presets.json`, shipped as `keras_r21d.weights`) names every
pretrained network: its architecture, the upstream checkpoint (`origin`: URL, file
name, layout, what checksum is known), the Hugging Face Hub repo it was republished
to (`hub`, null until one is published), class names, clip length, preprocessing and
published accuracy. `weights=` of the model factories resolves through
`resolve_weights`:

- a preset directory (config.json + model.weights.h5 [+ metadata.json]);
- `"hf://owner/repo"` or `"hf://owner/repo@revision"`: a preset pushed to the Hub
  (e.g. with `push_to_hub`);
- a preset name (`"r2plus1d_18_kinetics400_torchvision"`) or an alias
  (`"kinetics400"`: the first manifest entry for that network, and frame count
  when one is given).

A preset is fetched once into `cache_dir()/presets/<name>/`: from its Hub repo when
the manifest names one (pinned revision, sha256 of every file checked), otherwise
downloaded from its origin (hash checked as far as one is known), converted with
`keras_r21d.presets.convert.convert_checkpoint` and cached. Nothing half-written or
unverified is ever left in the cache, also when several processes fetch one preset at
once (a lock file per preset and per download; every file and directory is written
under a name of its own and renamed into place once verified).

Downloads are bounded (see `download`): `$KERAS_R21D_DOWNLOAD_TIMEOUT` seconds for a
whole transfer (default 3600), `$KERAS_R21D_STALL_TIMEOUT` seconds without data
(default 60), `$KERAS_R21D_MAX_DOWNLOAD_BYTES` bytes (default 2 GiB, or the manifest's
`origin.size` when it gives one).
"""

import contextlib
import copy
import http.client
import importlib.resources
import json
import logging
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request

from keras_r21d.presets.files import CONFIG_FILE, METADATA_FILE, MODEL_CARD, WEIGHTS_FILE, is_preset_dir

CACHE_ENV = "KERAS_R21D_CACHE"
HUB_PREFIX = "hf://"
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)
# Download limits (see `download`): seconds for a whole transfer, seconds without data, bytes.
TIMEOUT_ENV = "KERAS_R21D_DOWNLOAD_TIMEOUT"
STALL_ENV = "KERAS_R21D_STALL_TIMEOUT"
MAX_BYTES_ENV = "KERAS_R21D_MAX_DOWNLOAD_BYTES"

log = logging.getLogger("keras_r21d")


class DownloadError(OSError):
    """A file could not be fetched or failed its hash check; says how to get it by hand."""


def cache_dir():
    """Where presets and downloads are cached: `$KERAS_R21D_CACHE`, else `~/.keras/keras_r21d`."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or "~/.keras/keras_r21d").expanduser()


# ---------------------------------------------------------------- the manifest

def _manifest():
    """Every manifest entry, in manifest order, with the manifest's `defaults` filled in
    (the one place that reads presets.json)."""
    text = (importlib.resources.files("keras_r21d.weights") / "presets.json").read_text()
    return _entries(json.loads(text))


def _entries(manifest):
    """The entries of a manifest dict, each with the manifest's `defaults` under its own keys."""
    return [{**copy.deepcopy(manifest.get("defaults", {})), **entry} for entry in manifest["presets"]]


def list_presets(model_name=None):
    """Manifest entries (dicts), in manifest order, optionally only those for `model_name`."""
    return [copy.deepcopy(e) for e in _manifest() if model_name in (None, e["architecture"])]


def get_preset(name):
    """The manifest entry called `name`."""
    entries = _manifest()
    for entry in entries:
        if entry["name"] == name:
            return copy.deepcopy(entry)
    raise ValueError(f"Unknown preset {name!r}. Presets: {', '.join(e['name'] for e in entries)}.")


def pretrained_models(alias="kinetics400"):
    """`{registry name: [frame counts]}` of the networks that have `alias` weights."""
    found = {}
    for entry in _manifest():
        if alias in entry.get("aliases", ()):
            found.setdefault(entry["architecture"], set()).add(entry["frames"])
    return {name: sorted(frames) for name, frames in found.items()}


# ---------------------------------------------------------------- resolving `weights=`

def resolve_weights(weights, model_name, frames=None):
    """The local preset directory for a `weights=` value (see the module docstring).

    Args:
        weights: a preset directory, "hf://owner/repo[@revision]", a preset name or
            an alias such as "kinetics400".
        model_name: the registry name being built (a preset must be for it); None
            takes a preset of any network (but no alias: it names several).
        frames: with an alias, pick the entry trained on this many frames.

    Returns:
        pathlib.Path of a complete preset directory (downloaded and converted if needed).
    """
    weights = os.fspath(weights)
    if weights.startswith(HUB_PREFIX):
        return _from_hub_uri(weights)
    path = pathlib.Path(weights).expanduser()
    if is_preset_dir(path):
        return path
    if path.exists():
        raise ValueError(
            f"{weights!r} exists but is not a preset directory: one holds {CONFIG_FILE} and "
            f"{WEIGHTS_FILE} (written by keras_r21d.presets.files.save_preset or `keras-r21d convert`); "
            "a .weights.h5 file must end in .weights.h5."
        )
    entries = _manifest()
    by_name = {e["name"]: e for e in entries}
    if weights in by_name:
        arch = by_name[weights]["architecture"]
        if model_name is not None and arch != model_name:
            raise ValueError(
                f"The preset {weights!r} holds {arch} weights, not {model_name}: use "
                f"keras_r21d.get_model({arch!r}, weights={weights!r}) or one of the presets for "
                f"{model_name}: {_names_for(entries, model_name)}."
            )
        return fetch_preset(weights)
    with_alias = [e for e in entries if weights in e.get("aliases", ())]
    if with_alias and model_name is None:
        raise ValueError(f"{weights!r} is the alias of several presets; name one: "
                         f"{', '.join(e['name'] for e in with_alias)}.")
    if not with_alias:
        aliases = sorted({a for e in entries for a in e.get("aliases", ())})
        raise ValueError(
            f"Unknown weights {weights!r} for {model_name}: not a preset directory, not "
            f"'hf://owner/repo[@revision]', not a preset name or alias. Aliases: {', '.join(aliases)}; "
            f"presets for {model_name}: {_names_for(entries, model_name)}."
        )
    for_model = [e for e in with_alias if e["architecture"] == model_name]
    if not for_model:
        networks = sorted({e["architecture"] for e in with_alias})
        raise ValueError(
            f"No {weights!r} weights for {model_name}; networks with {weights!r} weights: "
            f"{', '.join(networks)}."
        )
    matches = [e for e in for_model if frames is None or e["frames"] == frames]
    if not matches:
        counts = " and ".join(str(n) for n in sorted({e["frames"] for e in for_model}))
        raise ValueError(
            f"{model_name} has {weights} weights at {counts} frames, not frames={frames}. Pass one of "
            f"those, or name a preset ({', '.join(e['name'] for e in for_model)}) with frames={frames}: "
            "the weights of every network but R2D run on clips of any length."
        )
    return fetch_preset(matches[0]["name"])


def _names_for(entries, model_name):
    return ", ".join(e["name"] for e in entries if e["architecture"] == model_name) or "none"


# ---------------------------------------------------------------- fetching presets

def fetch_preset(name, keep_download=False):
    """The converted preset `name` in `cache_dir()/presets/<name>/`, fetched if needed.

    From the entry's Hub repo when it has one, else downloaded from its origin,
    hash-checked and converted. `keep_download` keeps the origin checkpoint in
    `cache_dir()/downloads/` (deleted after conversion otherwise).

    Safe to call from several processes at once: one fetches while the others wait
    on a lock file (`.<name>.lock` beside the preset), then reuse its preset.
    """
    entry = get_preset(name)
    target = cache_dir() / "presets" / name
    if _is_complete(target):  # no lock needed to read: presets are renamed in whole
        return target
    with _locked(target):
        if _is_complete(target):  # installed by another process while this one waited
            return target
        if entry.get("hub"):
            files = {f: _hub_file(entry["hub"]["repo"], f, entry["hub"]["revision"],
                                  sha256=entry["hub"]["sha256"][f]) for f in PRESET_FILES}
            _install(target, lambda tmp: [shutil.copyfile(src, tmp / f) for f, src in files.items()])
        else:
            _fetch_origin(entry, target, keep_download)
    return target


def _fetch_origin(entry, target, keep_download):
    """Downloads, checks and converts the origin checkpoint of `entry` into `target`."""
    origin = entry["origin"]
    source = cache_dir() / "downloads" / origin["filename"]
    manual = _manual_steps(entry, source)
    checksum = origin.get("sha256") or origin.get("sha256_prefix")
    with _locked(source):
        if source.is_file():  # an earlier download or a file put there by hand: checked again
            _check_file(source, origin.get("sha256"), origin.get("sha256_prefix"), what=source, manual=manual)
        elif _offline():
            raise DownloadError(
                f"Preset {entry['name']!r} is not in the cache ({target}) and HF_HUB_OFFLINE is set, so "
                f"its checkpoint is not downloaded. {manual}"
            )
        else:
            download(origin["url"], source, sha256=origin.get("sha256"),
                     sha256_prefix=origin.get("sha256_prefix"), size=origin.get("size"), manual=manual)
        metadata = _metadata(entry)
        try:
            _install(target, lambda tmp: _convert(entry, source, tmp, metadata))
        except Exception as error:
            if checksum:  # the published file itself: the failure is not the download's
                raise
            # Without a checksum the strict conversion is the check: a file that fails it is
            # taken as a bad download and removed, so that a retry fetches it again.
            from keras_r21d.fileio import sha256_of

            received = f"{source.stat().st_size} bytes, sha256 {sha256_of(source)}" if source.is_file() else "?"
            source.unlink(missing_ok=True)
            raise DownloadError(
                f"{source} ({received}) from {origin['url']} is not a valid {origin['format']} checkpoint "
                f"of {entry['architecture']}: {error}. No checksum is published for it, so it was taken as "
                f"a corrupt or truncated download and removed. Retry. {manual}"
            ) from error
        if not keep_download:
            source.unlink(missing_ok=True)


def _convert(entry, source, directory, metadata):
    from keras_r21d.presets.convert import convert_checkpoint
    from keras_r21d.presets.files import read_config

    convert_checkpoint(source, directory, arch=entry["architecture"], layout=entry["origin"]["format"],
                       metadata=metadata)
    classes = read_config(directory)["classes"]
    if classes != entry["classes"]:
        log.warning("Preset %s: the checkpoint has %d classes, the manifest says %d.",
                    entry["name"], classes, entry["classes"])


def _is_complete(directory):
    return is_preset_dir(directory) and (directory / METADATA_FILE).is_file()


@contextlib.contextmanager
def _locked(path):
    """Holds an inter-process lock on `path`: the hidden file `.<name>.lock` beside it."""
    import filelock

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path.parent / f".{path.name}.lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log.info("Waiting for another process that is fetching %s.", path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _install(target, write):
    """Runs `write(tmp)` on a new temporary sibling of `target`, then renames it into place.

    The caller holds `target`'s lock, so a `target` that exists is an incomplete leftover.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache's presets from other users
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _metadata(entry):
    labels = None
    if entry.get("labels") == "kinetics400":
        from keras_r21d.presets.labels import kinetics400_labels

        try:
            labels = kinetics400_labels()
        except (RuntimeError, ValueError, OSError) as error:  # the weights are still good; names can be fetched later
            log.warning("Preset %s is cached without class names (%s); decode_predictions fetches "
                        "the Kinetics-400 names on first use.", entry["name"], error)
    return {
        "name": entry["name"], "labels": labels, "label_set": entry.get("labels"),
        "classes": entry["classes"], "frames": entry["frames"],
        "preprocessing": entry["preprocessing"], "accuracy": entry["accuracy"],
        "license": entry["license"], "paper": entry.get("paper"),
        "source": {"url": entry["origin"]["url"], "description": entry.get("source")},
    }


def _manual_steps(entry, source):
    origin = entry["origin"]
    return (
        f"To get it by hand: download {origin['url']} on a machine with internet access, then either "
        f"save it as {source} and retry, or run `keras-r21d convert FILE -o DIR --arch "
        f"{entry['architecture']} --format {origin['format']}` and pass weights=DIR."
    )


def _offline():
    """HF_HUB_OFFLINE, read now (huggingface_hub itself reads it once, at import)."""
    constants = sys.modules.get("huggingface_hub.constants")
    return (bool(getattr(constants, "HF_HUB_OFFLINE", False))
            or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"))


# ---------------------------------------------------------------- downloads and hashes

def download(url, dest, sha256=None, sha256_prefix=None, manual="", size=None, max_bytes=None,
             timeout=None, stall_timeout=None):
    """Downloads `url` to `dest` with a progress bar, checking its size and hash.

    The file is written to a temporary file of its own beside `dest`, hashed as read
    back from disk and renamed to `dest` only once complete and verified: a truncated,
    oversized or corrupt download never stays, and concurrent downloads of one file
    cannot mix their bytes.

    Args:
        url: what to download.
        dest: the final path.
        sha256: the full sha256 digest, when known.
        sha256_prefix: the leading hex digits of the sha256 (torch.hub's file-name
            convention), checked when the full digest is not known.
        manual: how to get the file by hand, appended to error messages.
        size: the file's size in bytes, when known: any other size is refused.
        max_bytes: refuse larger files. Default: `size` when known, else
            `$KERAS_R21D_MAX_DOWNLOAD_BYTES`, else 2 GiB.
        timeout: seconds for the whole transfer. Default: `$KERAS_R21D_DOWNLOAD_TIMEOUT`,
            else 3600. Checked as data arrives, so it may be overrun by up to the
            stall timeout.
        stall_timeout: seconds to wait for a connection or for the next bytes.
            Default: `$KERAS_R21D_STALL_TIMEOUT`, else 60.
    """
    dest = pathlib.Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    timeout = timeout or _setting(TIMEOUT_ENV, 3600.0)
    stall_timeout = stall_timeout or _setting(STALL_ENV, 60.0)
    max_bytes = max_bytes or size or int(_setting(MAX_BYTES_ENV, 2 << 30))
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = pathlib.Path(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            received = _transfer(url, f, dest, manual, max_bytes, timeout, stall_timeout)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, or a crash could keep zeros
        if size is not None and received != size:
            raise DownloadError(
                f"Wrong size for {url}: received {received} bytes, expected {size} (the manifest's size); "
                f"nothing was written to {dest}. Retry. {manual}".rstrip()
            )
        from keras_r21d.fileio import sha256_of

        # The bytes kept are checked, not the stream: what is renamed is what was verified.
        _check_digest(sha256_of(tmp), sha256, sha256_prefix, what=url, manual=manual)
        tmp.chmod(0o644)  # mkstemp's 0600 would hide a shared cache's files from other users
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _transfer(url, f, dest, manual, max_bytes, timeout, stall_timeout):
    """Streams `url` into the open file `f`; returns the number of bytes received."""
    start, received, expected = time.monotonic(), 0, None
    wait = min(stall_timeout, timeout)  # for a connection, and for each read

    def fail(why, error=None):
        raise DownloadError(
            f"Could not download {url} ({why}); nothing was written to {dest}. {manual}".rstrip()
        ) from error

    try:
        with urllib.request.urlopen(url, timeout=wait) as response:
            expected = _content_length(response, url, dest, manual)
            if expected is not None and expected > max_bytes:
                fail(_too_big(f"the server announces {expected} bytes", max_bytes))
            with _progress(expected, dest.name) as bar:
                # read1: one socket read at a time, so that a trickle cannot outlast the deadline.
                while chunk := response.read1(1 << 20):
                    received += len(chunk)
                    if received > max_bytes:
                        fail(_too_big(f"more than {max_bytes} bytes were received", max_bytes))
                    f.write(chunk)
                    bar.update(len(chunk))
                    if (elapsed := time.monotonic() - start) > timeout:
                        fail(f"timed out: {received} of {expected or 'an unknown number of'} bytes in "
                             f"{elapsed:.1f} s, over the {timeout:g} s limit; on a slow connection raise "
                             f"${TIMEOUT_ENV}")
    except DownloadError:
        raise
    except http.client.IncompleteRead:  # the connection closed inside a chunk
        expected = expected or f"more than {received}"
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = error if isinstance(error, urllib.error.HTTPError) else getattr(error, "reason", error)
        if isinstance(reason, TimeoutError):
            reason = (f"no data for {wait:g} s after {received} bytes; on a slow connection raise "
                      f"${STALL_ENV if wait == stall_timeout else TIMEOUT_ENV}")
        fail(reason, error)
    if expected is not None and received != expected:
        raise DownloadError(
            f"Truncated download of {url}: received {received} of {expected} bytes (the connection "
            f"closed early); nothing was written to {dest}. Retry. {manual}".rstrip()
        )
    return received


def _content_length(response, url, dest, manual):
    values = response.headers.get_all("Content-Length") or []
    if not values:
        return None
    if len(set(values)) == 1 and values[0].strip().isascii() and values[0].strip().isdigit():
        return int(values[0])
    raise DownloadError(
        f"Could not download {url}: the server sent an invalid Content-Length header "
        f"({', '.join(map(repr, values))}), expected one byte count; nothing was written to {dest}. "
        f"Retry later. {manual}".rstrip()
    )


def _too_big(received, max_bytes):
    return (f"too large: {received}, more than the {max_bytes}-byte limit; a checkpoint here is far "
            f"smaller, so check the URL, or raise ${MAX_BYTES_ENV} if the file is right")


def _setting(env, default):
    """A positive number from the environment variable `env`, else `default`."""
    value = os.environ.get(env, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = 0
    if not number > 0 or number == float("inf"):
        raise ValueError(f"${env} must be a positive number; received {value!r}.")
    return number


def _check_file(path, sha256, sha256_prefix, what, manual="", remove=True):
    """Checks the file at `path`; on a mismatch deletes it (with `remove`) and raises."""
    from keras_r21d.fileio import sha256_of

    try:
        _check_digest(sha256_of(path), sha256, sha256_prefix, what=what, manual=manual)
    except DownloadError:
        if remove:
            pathlib.Path(path).unlink(missing_ok=True)
        raise


def _check_digest(actual, sha256=None, sha256_prefix=None, what="", manual=""):
    if sha256:
        ok, expected = actual == sha256.lower(), f"sha256 {sha256}"
    elif sha256_prefix:
        ok, expected = actual.startswith(sha256_prefix.lower()), f"a sha256 starting with {sha256_prefix}"
    else:
        log.info("No checksum was published for %s (sha256 %s); the strict conversion is the check.",
                 what, actual)
        return
    if not ok:
        raise DownloadError(
            f"Hash mismatch for {what}: expected {expected}, received sha256 {actual}. The file is "
            f"corrupt or not the published one and was not kept. {manual}".rstrip()
        )


def _progress(total, name):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024)


# ---------------------------------------------------------------- the Hugging Face Hub

def _hub_file(repo_id, filename, revision=None, sha256=None):
    """Local path of `filename` of a Hub repo (downloaded into the HF cache if needed).

    With `sha256`, the file is checked; a mismatching file is removed from the HF
    cache and an error raised. HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE are read
    at call time.
    """
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    where = f"{repo_id}@{revision or 'main'}"
    _check_hub_ref(repo_id, revision, where)
    url = f"https://huggingface.co/{repo_id}/tree/{revision or 'main'}"
    manual = (f"To get it by hand: download {', '.join(PRESET_FILES)} from {url} into one folder "
              "and pass that folder as weights=.")
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id, filename, revision=revision, endpoint=os.environ.get("HF_ENDPOINT"),
            cache_dir=os.environ.get("HF_HUB_CACHE"), local_files_only=_offline(),
        )
    except LocalEntryNotFoundError as error:
        raise DownloadError(
            f"{filename} of {where} is not in the Hugging Face cache and cannot be downloaded "
            f"(offline: HF_HUB_OFFLINE is set, or no network). Connect and retry, unset HF_HUB_OFFLINE, "
            f"or: {manual}"
        ) from error
    except EntryNotFoundError as error:
        raise DownloadError(f"{where} has no {filename}: it is not a keras_r21d preset repo.") from error
    except (HfHubHTTPError, OSError) as error:
        raise DownloadError(f"Could not download {filename} of {where}: {error}. {manual}") from error
    if sha256:
        blob = os.path.realpath(path)
        try:
            _check_file(blob, sha256, None, what=f"{filename} of {where}", manual=manual)
        except DownloadError:
            pathlib.Path(path).unlink(missing_ok=True)  # the snapshot link to the removed blob
            raise
    return pathlib.Path(path)


# A branch or tag name: names of letters, digits, '.', '_', '-' (not starting with '.' or '-'),
# joined by single '/' (as in "refs/pr/1"); a commit sha is one such name. It becomes a path in
# huggingface_hub's cache, so nothing that could leave it ('..', '/x', '\\', control characters).
_REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")


def _check_hub_ref(repo_id, revision, source):
    """Refuses a repo id or revision that is not one, before any request (ValueError)."""
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"Invalid Hub repo id {repo_id!r} in {source!r}: expected 'owner/repo'.")
    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise ValueError(f"Invalid Hub repo id {repo_id!r} in {source!r}: {error}") from None
    if revision is None:
        return
    if not (isinstance(revision, str) and len(revision) <= 255 and _REVISION.fullmatch(revision)
            and ".." not in revision and not revision.endswith((".", ".lock"))):
        raise ValueError(
            f"Invalid Hub revision {revision!r} in {source!r}: expected a branch or tag name (letters, "
            "digits, '.', '_', '-', names joined by '/'; no '..', no leading '/' or '.') or a 40-hex "
            "commit sha, e.g. 'hf://owner/repo@main' or 'hf://owner/repo@v1.0'."
        )


def _from_hub_uri(uri):
    spec = uri[len(HUB_PREFIX):]
    repo_id, at, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or (at and not revision):
        raise ValueError(f"Expected 'hf://owner/repo' or 'hf://owner/repo@revision'; received {uri!r}.")
    _check_hub_ref(repo_id, revision or None, uri)
    # The first file fixes the commit, so all files come from one snapshot.
    config = _hub_file(repo_id, CONFIG_FILE, revision or None)
    commit = config.parent.name
    for filename in PRESET_FILES[1:]:
        _hub_file(repo_id, filename, commit)
    return config.parent


def push_to_hub(preset_dir, repo_id, revision=None, private=False, token=None,
                commit_message="Upload keras_r21d preset", card=None):
    """Uploads a preset directory to the Hugging Face Hub; returns the commit sha.

    Load it back with `get_model(name, weights="hf://<repo_id>@<commit>")`.

    The repo's README.md is `card` when given, else the directory's own README.md, else a
    model card written by `keras_r21d.presets.cards.model_card` (library, task, datasets,
    license, published accuracy, size, usage).

    Args:
        preset_dir: a directory written by `keras_r21d.presets.files.save_preset`.
        repo_id: "owner/name"; created (model repo) when it does not exist.
        revision: branch to commit to (created if needed); None: the default branch.
        private: create the repo private.
        token: Hub token; None uses the saved login or HF_TOKEN.
        commit_message: the commit message.
        card: the README.md text to upload instead of the directory's or a generated one.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    preset_dir = pathlib.Path(preset_dir)
    if not is_preset_dir(preset_dir):
        raise ValueError(
            f"{os.fspath(preset_dir)!r} is not a preset directory (it needs {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}); write one with keras_r21d.presets.files.save_preset(model, directory)."
        )
    _check_hub_ref(repo_id, revision, f"{repo_id}@{revision or 'main'}")
    if card is None and not (preset_dir / MODEL_CARD).is_file():
        from keras_r21d.presets.cards import model_card

        card = model_card(preset_dir, repo_id)
    # A generated card is uploaded from memory, not written into the preset directory:
    # save_preset keeps a README.md across saves as the user's own, so a card written
    # there would go stale with the next weights and never be regenerated.
    readme = preset_dir / MODEL_CARD if card is None else card.encode()
    operations = [CommitOperationAdd(f, preset_dir / f) for f in PRESET_FILES if (preset_dir / f).is_file()]
    operations.append(CommitOperationAdd(MODEL_CARD, readme))
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"), token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)
    return info.oid
