"""Clip features for a set of videos: every window of every video through a network,
into one HDF5 file keyed by video.

Decoding runs on threads while the network runs, and windows of several videos share a
batch. Each finished video is written at once to a part file beside the output
(`OUT.parts/`), whole or not at all; a run that is stopped (even killed) and started
again skips the finished videos and redoes the one it was in. The HDF5 file is
assembled from the parts when every video is done (HDF5 itself is not safe to kill
mid-write). An unreadable video is reported in the summary and never stops the run.

HDF5, not Zarr or Parquet: one file that h5py, PyTables, MATLAB and pandas read,
arrays of any rank (stage feature maps are 4D per window) with attributes, and h5py
already comes with Keras.
"""

import contextlib
import hashlib
import io
import json
import math
import os
import pathlib
import queue
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_r21d.data.sampling import check_windows, windows
from keras_r21d.fileio import write_bytes, write_json

FORMAT_VERSION = 1
STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5")
POOLED = "pool"
RAY_RETRIES = 3
DECODE_NICENESS = 10  # added to the decoding threads' niceness (see _lower_priority)  # the global average of conv5: the clip embedding before the classifier


def feature_model(model, layer=POOLED):
    """A model from clips to the features of `layer`: "pool" (the 512-d embedding the
    classifier sees) or a stage's feature map ("conv1" ... "conv5")."""
    import keras

    from keras_r21d.models import VideoResNet
    from keras_r21d.models.backbone import stage_feature_model
    from keras_r21d.models.optimize import inference_model

    if layer not in (POOLED, *STAGES):
        raise ValueError(f"Unknown layer {layer!r}; expected {POOLED!r} (the pooled clip embedding) or one of "
                         f"{list(STAGES)}.")
    if not isinstance(model, VideoResNet):
        raise TypeError(f"Features come from a keras_r21d network (a VideoResNet); received "
                        f"{type(model).__name__} {getattr(model, 'name', '')!r}.")
    if layer == POOLED:
        config = model.get_config()
        if not (config["include_top"] is False and config["pooling"] == "avg"):
            # The same network without its classifier: the weights are shared by name.
            headless = VideoResNet.from_config({**config, "include_top": False, "pooling": "avg",
                                                "name": f"{model.name}_features"})
            for layer_ in headless.layers:
                if layer_.weights:
                    layer_.set_weights(model.get_layer(layer_.name).get_weights())
            model = headless
        return inference_model(model)
    stages = stage_feature_model(model)
    return keras.Model(stages.input, stages.output[layer], name=f"{model.name}_{layer}")


def _key(path):
    """The HDF5 key of a video: its absolute path without the leading separator, or its
    URL with "://" as "/" ("s3://bucket/a.mp4" -> "s3/bucket/a.mp4")."""
    path = os.fspath(path)
    if "://" in path:
        return path.replace("://", "/", 1)
    return os.path.abspath(path).lstrip(os.sep).replace(os.sep, "/")


@contextlib.contextmanager
def _local(path):
    """A local file of the video at `path`: the path itself, or a temporary copy of an fsspec URL."""
    if "://" not in path:
        yield path
        return
    import fsspec

    suffix = pathlib.PurePosixPath(path.split("://", 1)[1]).suffix
    with tempfile.TemporaryDirectory(prefix="keras_r21d_video_") as folder:
        local = os.path.join(folder, "video" + suffix)
        with fsspec.open(path, "rb") as source, open(local, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        yield local


def _part_name(key):
    return hashlib.sha256(key.encode()).hexdigest()[:24] + ".npz"


class _Plan:
    """The windows of one video and the features gathered for them so far."""

    def __init__(self, path, wins):
        self.path, self.windows, self.rows, self.failed = path, wins, [], None


def extract_features(
    model,
    videos,
    output,
    weights=None,
    layer=POOLED,
    window=16,
    stride=None,
    fps=None,
    unit="frames",
    short="loop",
    tail="shift",
    batch_size=8,
    workers=2,
    chunk=32,
    progress=True,
    overwrite=False,
    cluster=None,
    cluster_workers=2,
):
    """Features of every window of every video, written to one HDF5 file.

    Args:
        model: a registry name (built with `weights`) or a keras_r21d network.
        videos: video files (a list of paths).
        output: the HDF5 file to write (".h5").
        weights: for a registry name: a preset name or alias, hf://..., a folder.
        layer: "pool" (the pooled clip embedding, 512-d for the paper's networks) or a
            stage, "conv1" ... "conv5" (its feature map per window).
        window, stride, fps, unit, short, tail: the windows of each video, see
            `keras_r21d.data.sampling.windows` (defaults: 16 frames side by side at
            the video's own rate, the tail covered by a last window ending at the end).
        batch_size: windows per network call (across videos).
        workers: decoding threads.
        chunk: windows decoded at a time per video (bounds memory on long videos).
        progress: show a progress bar with videos/s and windows/s.
        overwrite: replace an existing `output` (otherwise refused).
        cluster: None (this process), or a Ray cluster to spread the videos over:
            "local" (a Ray cluster started here with `cluster_workers` workers),
            "auto" (the running one) or "ray://host:port". Each Ray Data worker
            holds its own copy of the network and writes the part files of its
            videos (the part folder must be on a file system every worker sees);
            a worker that dies is restarted and its videos redone; the HDF5 file
            is assembled here. Needs `pip install "keras-r21d[cluster]"` (Ray).
        cluster_workers: how many Ray workers (one network each).

    Videos may be local paths or fsspec URLs ("file://", "s3://", "gs://", ...;
    remote ones are copied to a temporary file to be decoded).

    Returns:
        dict: `output`, `videos` (extracted), `windows`, `resumed` (videos taken from
        an interrupted run), `skipped` ({path: reason}).

    The file holds a group per video, keyed by its absolute path (without the leading
    "/"), with datasets `features` (windows x feature shape, float32), `start` and
    `end` (seconds), `frames` (the frame numbers of each window) and the attribute
    `path`; the root's attributes record the model, weights, layer, window protocol,
    preprocessing and software versions.
    """
    from keras_r21d.applications import get_model
    from keras_r21d.data.pipeline import SkippedVideos
    from keras_r21d.inference import stored_preprocessing

    output = pathlib.Path(output)
    if window is None:
        raise ValueError("`window` is required: the length of a window, in `unit`s.")
    window, stride = check_windows(window, stride, fps, unit, short, tail)
    for value, what in ((batch_size, "batch_size"), (workers, "workers"), (chunk, "chunk")):
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"`{what}` must be a positive integer; received {value!r}.")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{os.fspath(output)!r} exists; pass overwrite=True (--overwrite) to replace it.")
    if isinstance(model, str):
        name = model
        model = get_model(model, weights=weights, include_top=False, pooling="avg" if layer == POOLED else None,
                          frames=window if unit == "frames" and name.startswith("r2d") else None)
    else:
        name = model.name
    features = feature_model(model, layer)
    fixed = model.input_shape[1]
    if fixed is not None and unit == "frames" and window != fixed:
        raise ValueError(f"{model.name} takes clips of exactly {fixed} frames; received window={window}.")
    preprocessing = stored_preprocessing(model)
    protocol = {"window": window, "stride": stride if stride is not None else window, "fps": fps, "unit": unit,
                "short": short, "tail": tail, "preprocessing": preprocessing}
    settings = json.loads(json.dumps({
        "format": FORMAT_VERSION, "model": name, "network": model.get_config(),
        "weights": os.fspath(weights) if isinstance(weights, os.PathLike) else weights,
        "layer": layer, "protocol": protocol,
    }, default=list))

    parts = output.with_name(output.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    recorded = parts / "settings.json"
    if recorded.is_file():
        previous = json.loads(recorded.read_text())
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise ValueError(f"{os.fspath(parts)!r} holds an interrupted extraction with other settings "
                             f"({', '.join(changed)} differ); use the same settings, or delete that folder.")
    else:
        write_json(recorded, settings)

    paths = list({_key(p): os.fspath(p) for p in reversed(list(videos))}.values())[::-1]  # one per video
    done = {p for p in paths if (parts / _part_name(_key(p))).is_file()}
    todo = [p for p in paths if p not in done]
    if done:
        print(f"Resuming: {len(done)} of {len(paths)} videos already extracted in {parts}.", file=sys.stderr)
    skipped = SkippedVideos()
    if cluster is None:
        counts = _run(features, todo, parts, protocol, batch_size, workers, chunk, progress, skipped)
    else:
        counts = _run_on_ray(cluster, cluster_workers, model, layer, todo, parts, protocol, batch_size, workers,
                             chunk, skipped)

    _assemble(output, [p for p in paths if (parts / _part_name(_key(p))).is_file()], parts, settings,
              skipped.reasons)
    shutil.rmtree(parts)
    if len(skipped):
        print(skipped.summary(), file=sys.stderr)
    return {"output": output, "videos": len(paths) - len(skipped), "windows": counts["windows"],
            "resumed": len(done), "skipped": dict(skipped.reasons)}


def _run(features, todo, parts, protocol, batch_size, workers, chunk, progress, skipped):
    """Decodes on `workers` threads, runs the network on the main thread, writes parts."""
    from tqdm import tqdm

    from keras_r21d.data.preprocessing import preprocess_input
    from keras_r21d.data.video import frame_times, read_frames

    queued = queue.Queue(maxsize=2 * workers + 2)  # bounds the decoded clips held in memory
    stop = threading.Event()

    def put(item):
        while not stop.is_set():  # a stopped run must not leave decoders blocked on a full queue
            try:
                return queued.put(item, timeout=0.1)
            except queue.Full:
                continue

    def decode(path):
        _lower_priority()
        try:
            with _local(path) as local:
                decode_local(path, local)
        except Exception as error:  # noqa: BLE001 - one bad video must not stop the others
            put(("error", path, f"{type(error).__name__}: {error}"))

    def decode_local(path, local):
        wins = windows(frame_times(local), protocol["window"], protocol["stride"], protocol["fps"],
                       protocol["unit"], protocol["short"], protocol["tail"], source=path)
        fixed = features.input_shape[1]
        if fixed is not None and len(wins[0].frames) != fixed:
            raise ValueError(f"windows of {len(wins[0].frames)} frames here, and the network takes exactly {fixed}; "
                             "give the window in frames, or an fps at which it spans that many")
        put(("plan", path, wins))
        for i in range(0, len(wins), chunk):
            part = wins[i:i + chunk]
            clips = read_frames(local, np.concatenate([w.frames for w in part]))
            clips = clips.reshape(len(part), len(part[0].frames), *clips.shape[1:])
            put(("clips", path, np.asarray(preprocess_input(clips, **protocol["preprocessing"]))))
            if stop.is_set():
                return
        put(("end", path, None))

    plans, ended, pending, owners = {}, set(), [], []
    counts = {"windows": 0}
    bar = tqdm(total=len(todo), unit="video", disable=not progress, file=sys.stderr)
    started = time.perf_counter()

    def run_batch(size):
        batch = np.concatenate(pending)[:size] if len(pending) > 1 else pending[0][:size]
        rest = np.concatenate(pending)[size:] if len(pending) > 1 else pending[0][size:]
        pending[:] = [rest] if len(rest) else []
        out = np.asarray(features.predict_on_batch(batch), np.float32)
        for row, path in zip(out, owners[:size]):
            if plans[path].failed is None:
                plans[path].rows.append(row)
        del owners[:size]
        counts["windows"] += size

    def finish(path):
        plan = plans.pop(path)
        ended.discard(path)
        if plan.failed is None:  # written whole under a name of its own (Ray workers share the folder)
            npz = io.BytesIO()
            np.savez(npz, features=np.stack(plan.rows), start=[w.start for w in plan.windows],
                     end=[w.end for w in plan.windows], frames=np.stack([w.frames for w in plan.windows]),
                     path=np.asarray(path))
            write_bytes(parts / _part_name(_key(path)), npz.getvalue())
        bar.update(1)
        elapsed = time.perf_counter() - started
        bar.set_postfix_str(f"{counts['windows'] / elapsed:.1f} windows/s")

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    try:
        for path in todo:
            pool.submit(decode, path)
        remaining = len(todo)
        while remaining or owners:
            kind, path, value = queued.get() if remaining else ("flush", None, None)
            if kind == "plan":
                plans[path] = _Plan(path, value)
            elif kind == "clips":
                if pending and pending[0].shape[1:] != value.shape[1:]:  # windows of other lengths (seconds at
                    while owners:                                        # the videos' own rates): a batch apiece
                        run_batch(min(batch_size, len(owners)))
                pending.append(value)
                owners.extend([path] * len(value))
            elif kind in ("end", "error"):
                remaining -= 1
                if kind == "error":
                    skipped.add(path, value)
                    plans.setdefault(path, _Plan(path, [])).failed = value
                ended.add(path)
            while len(owners) >= batch_size or (kind == "flush" and owners):
                run_batch(min(batch_size, len(owners)))
            for done_path in [p for p in ended if p not in owners]:
                finish(done_path)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return counts


def _lower_priority():
    """Lowers this thread's scheduling priority (Linux schedules threads one by one), so
    that decoding ahead never takes a core from the network: it fills the idle time."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODE_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: decoding still works
        pass


class _RayWorker:
    """One Ray Data worker: its own copy of the network, the single-process loop over its videos."""

    def __init__(self, config, weights, layer, parts, protocol, batch_size, threads, chunk):
        import ray

        from keras_r21d.models import VideoResNet

        network = VideoResNet.from_config(config)
        network.set_weights(ray.get(weights) if isinstance(weights, ray.ObjectRef) else weights)
        self.features = feature_model(network, layer)
        self.settings = (pathlib.Path(parts), protocol, batch_size, threads, chunk)

    def __call__(self, batch):
        from keras_r21d.data.pipeline import SkippedVideos

        parts, protocol, batch_size, threads, chunk = self.settings
        skipped = SkippedVideos()
        todo = [p for p in batch["path"] if not (parts / _part_name(_key(p))).is_file()]  # a retried shard
        counts = _run(self.features, todo, parts, protocol, batch_size, threads, chunk, False, skipped)
        return {"path": batch["path"], "error": [skipped.reasons.get(p, "") for p in batch["path"]],
                "windows": [counts["windows"]] + [0] * (len(batch["path"]) - 1)}


def _run_on_ray(address, num_workers, network, layer, todo, parts, protocol, batch_size, threads, chunk, skipped):
    """The videos spread over `num_workers` Ray Data workers; their errors into `skipped`."""
    try:
        import ray
    except ImportError as error:
        raise RuntimeError('cluster= needs Ray: pip install "keras-r21d[cluster]".') from error
    if not todo:
        return {"windows": 0}
    started_here = not ray.is_initialized()
    if started_here:
        local = address == "local"
        ray.init(address=None if local else address, num_cpus=num_workers if local else None,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        rows = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=min(len(todo), 4 * num_workers))
        results = rows.map_batches(
            _RayWorker, batch_size=max(1, math.ceil(len(todo) / (4 * num_workers))),
            compute=ray.data.ActorPoolStrategy(size=num_workers), num_cpus=1,
            # A worker that dies (out of memory, a crashing decoder) is restarted and its shard redone.
            ray_remote_args_fn=lambda: {"max_restarts": RAY_RETRIES, "max_task_retries": RAY_RETRIES},
            fn_constructor_kwargs={
                "config": network.get_config(), "weights": ray.put(network.get_weights()), "layer": layer,
                "parts": os.fspath(parts), "protocol": protocol, "batch_size": batch_size, "threads": threads,
                "chunk": chunk,
            },
        ).take_all()
    finally:
        if started_here:
            ray.shutdown()
    for row in results:
        if row["error"]:
            skipped.add(str(row["path"]), str(row["error"]))
    return {"windows": int(sum(row["windows"] for row in results))}


def _versions():
    import importlib.metadata

    import av
    import h5py
    import keras

    try:
        version = importlib.metadata.version("keras-r21d")
    except importlib.metadata.PackageNotFoundError:  # a source checkout that is not installed
        version = "unknown"
    return {"keras_r21d": version, "keras": keras.__version__, "backend": keras.backend.backend(),
            "av": av.__version__, "h5py": h5py.__version__, "numpy": np.__version__}


def _assemble(output, paths, parts, settings, skipped):
    """Writes the HDF5 file from the part files, whole (under a temporary name, then renamed)."""
    import h5py

    partial = output.with_name(f".{output.name}.partial")
    with h5py.File(partial, "w") as f:
        for key in ("model", "weights", "layer"):
            f.attrs[key] = json.dumps(settings[key]) if settings[key] is None else settings[key]
        f.attrs["protocol"] = json.dumps(settings["protocol"])
        f.attrs["network"] = json.dumps(settings["network"])
        f.attrs["versions"] = json.dumps(_versions())
        f.attrs["skipped"] = json.dumps(skipped)
        for path in paths:
            with np.load(parts / _part_name(_key(path))) as part:
                group = f.create_group(_key(path))
                group.attrs["path"] = str(part["path"])
                for name in ("features", "start", "end", "frames"):
                    group.create_dataset(name, data=part[name])
    os.replace(partial, output)
