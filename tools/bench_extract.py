"""Benchmark: is video decoding the bottleneck of feature extraction?

    python tools/bench_extract.py [--model r2plus1d_18] [--batch-size 8] [--videos FILE_OR_DIR ...]
                                  [--count 6] [--duration 10] [--seconds 30] [--workers 2]
                                  [--workdir DIR] [--no-torch] [--quick] [--json OUT]

Generates `--count` test videos with PyAV (320x240, 30 fps, `--duration` s each; H.264
through libx264 when PyAV has it, MPEG-4 Part 2 otherwise; moving gradients, a moving
square and noise, seeded, so the codec has work) or takes the `--videos` given, then
measures on this machine:

  (a) the model alone: `keras_r21d.features.feature_model(get_model(MODEL), "pool")`
      (random weights: speed does not depend on them; the inference graph that
      extraction runs) on random preprocessed batches, clips/s over `--seconds` after
      warm-up; timed before (b) and again after (c), the faster run is the reference;
  (b) decoding + preprocessing alone: the reading code of `extract_features` (windows
      of `frame_times`, `read_frames` by chunks, `preprocess_input` with the Kinetics
      defaults) on `--workers` threads, the network replaced by nothing: windows/s;
  (c) `keras_r21d.features.extract_features` end to end (HDF5 file written):
      videos/s and windows/s, from its call to its return;
  (d) for reference, torchvision's network of the same name in a torch worker process
      (tools/bench.py's worker; TensorFlow must not share a process with torchvision);
      only for torchvision's networks, skipped by `--no-torch` and `--quick`.

The goal: (c) windows/s >= 90% of (a) clips/s (same network, same batch size). (c)
runs the very model (a) timed, already traced (`feature_model` is swapped for it
during the call and its `predict_on_batch` is timed), so tracing is in neither figure;
everything else extraction does is in (c): the first decode of every file (its frame
index; the in-process index cache is emptied before (b) and before (c)), waiting for
the first windows, the part files and the HDF5 file. The table also says how long the
network ran inside (c) and how fast it ran there, which tells whether a shortfall is
the network waiting for decoded windows or decoding taking CPU from the network.

`--workdir DIR` generates the videos into DIR and keeps them and the HDF5 file there
(default: a temporary folder, removed). `--json OUT` writes everything to a file.
"""

import importlib.util
import math
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

TARGET = 0.90  # (c) windows/s over (a) clips/s
WINDOW = 16  # extract_features' default window (frames), stride = window
LAYER = "pool"
MIN_BATCHES = 3  # per timing of the model alone

DEFAULTS = {"model": "r2plus1d_18", "widths": None, "batch_size": 8, "count": 6, "duration": 10.0,
            "width": 320, "height": 240, "fps": 30, "stagger": 0, "seconds": 30.0, "workers": 2, "chunk": 32}
# --quick: a smoke test (the tests run it), not a measurement. Two short videos, the second
# 11 frames shorter (48 frames: 3 windows exactly; 37: 2 windows and a shifted tail).
QUICK = {"model": "r3d_10", "widths": (4, 4, 8, 8), "batch_size": 4, "count": 2, "duration": 1.6,
         "width": 160, "height": 120, "stagger": 11, "seconds": 0.5}


def _load_bench():
    """tools/bench.py as a module (tools/ is not a package): its torch worker and helpers.
    It imports neither TensorFlow nor torch itself."""
    spec = importlib.util.spec_from_file_location("tools_bench", pathlib.Path(__file__).with_name("bench.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


# ------------------------------------------------------------------ the test videos

def _codec():
    """libx264 when this PyAV can encode with it, else mpeg4."""
    import av

    if "libx264" in av.codecs_available:
        try:
            av.codec.Codec("libx264", "w")
        except Exception:  # noqa: BLE001 - listed but not usable: the fallback
            return "mpeg4"
        return "libx264"
    return "mpeg4"


def _frame(k, t, x, y, width, height, rng):
    """Frame `t` of video `k`: gradients moving at their own speeds, a moving square, noise."""
    import numpy as np

    shift = t * (2.0 + k)
    r = 127.5 + 110 * np.sin(2 * np.pi * ((x + shift) / width * (1 + k % 3)))
    g = 127.5 + 110 * np.sin(2 * np.pi * ((y - 0.7 * shift) / height * 2 + x / width))
    b = (x + y + 3 * t) % 256 * 0.8
    image = np.stack([r, g, b], axis=-1)
    side = max(8, height // 5)
    top = int((height - side) * (0.5 + 0.45 * math.sin(0.11 * t + k)))
    left = int((width - side) * (0.5 + 0.45 * math.cos(0.07 * t + 2 * k)))
    image[top:top + side, left:left + side] = (240, 240 - 20 * k % 200, 40)
    image += rng.normal(0.0, 10.0, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_videos(folder, count, duration, width, height, fps, stagger=0, seed=0):
    """Writes `count` seeded videos into `folder`: video k has `round(duration * fps) -
    k * stagger` frames. Returns `(paths, {"codec", "frames", "bytes", "seconds"})`."""
    import av
    import numpy as np

    codec, start = _codec(), time.perf_counter()
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    paths, counts = [], []
    for k in range(count):
        frames = max(1, round(duration * fps) - k * stagger)
        path = pathlib.Path(folder) / f"bench_{k}.mp4"
        rng = np.random.default_rng(seed + k)
        with av.open(str(path), "w") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if codec == "libx264":
                stream.options = {"preset": "medium", "crf": "23"}
            for t in range(frames):
                image = av.VideoFrame.from_ndarray(_frame(k, t, x, y, width, height, rng), format="rgb24")
                for packet in stream.encode(image):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
        counts.append(frames)
    return paths, {"codec": codec, "frames": counts, "bytes": sum(p.stat().st_size for p in paths),
                   "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------ the measurements

def _clear_index_cache():
    """Empties keras_r21d.data.video's in-process frame-index cache, so that the next read
    of each file decodes it once more to index it, as extraction of new videos does."""
    from keras_r21d.data import video

    with video._cache_lock:
        video._cache.clear()


def model_alone(features, batch_size, seconds, seed=0):
    """Clips/s of `features.predict_on_batch` on random preprocessed batches, over at least
    `seconds` and `MIN_BATCHES` batches (`warm_up` first). Returns a dict."""
    import numpy as np

    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal((batch_size, WINDOW, 112, 112, 3), np.float32) for _ in range(2)]
    times, start = [], time.perf_counter()
    with bench._Interference([]) as other:
        while time.perf_counter() - start < seconds or len(times) < MIN_BATCHES:
            t = time.perf_counter()
            features.predict_on_batch(batches[len(times) % 2])
            times.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    return {"batches": len(times), "clips": len(times) * batch_size, "seconds": elapsed,
            "clips_per_s": len(times) * batch_size / elapsed, "ms_per_batch": 1e3 * elapsed / len(times),
            "ms_per_batch_best": 1e3 * min(times), "other_cpu": other.fraction}


def warm_up(features, batch_size):
    """Traces `predict_on_batch` for `batch_size` and for a second batch size: TensorFlow then
    generalises the batch dimension, so the last, partial batch of (c) does not retrace."""
    import numpy as np

    for size in (batch_size, 1 if batch_size > 1 else 2, batch_size):
        features.predict_on_batch(np.zeros((size, WINDOW, 112, 112, 3), np.float32))


def decode_alone(paths, protocol, workers, chunk):
    """Windows/s of extract_features' reading code with no network: each video on one of
    `workers` threads, its windows decoded `chunk` at a time and preprocessed."""
    import numpy as np

    from keras_r21d.data.preprocessing import preprocess_input
    from keras_r21d.data.sampling import windows
    from keras_r21d.data.video import frame_times, read_frames

    def one(path):
        try:
            times = frame_times(path)
            wins = windows(times, protocol["window"], protocol["stride"], protocol["fps"], protocol["unit"],
                           protocol["short"], protocol["tail"], source=path)
            for i in range(0, len(wins), chunk):
                part = wins[i:i + chunk]
                clips = read_frames(path, np.concatenate([w.frames for w in part]))
                clips = clips.reshape(len(part), len(part[0].frames), *clips.shape[1:])
                np.asarray(preprocess_input(clips, **protocol["preprocessing"]))
            return {"path": os.fspath(path), "frames": len(times), "windows": len(wins), "error": None}
        except Exception as error:  # noqa: BLE001 - reported, as extraction skips it
            return {"path": os.fspath(path), "frames": None, "windows": 0, "error": f"{type(error).__name__}: {error}"}

    _clear_index_cache()
    with bench._Interference([]) as other:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            per_video = list(pool.map(one, paths))
        elapsed = time.perf_counter() - start
    count = sum(v["windows"] for v in per_video)
    done = sum(v["error"] is None for v in per_video)
    return {"videos": done, "windows": count, "seconds": elapsed, "windows_per_s": count / elapsed,
            "videos_per_s": done / elapsed, "workers": workers, "chunk": chunk, "other_cpu": other.fraction,
            "per_video": per_video}


class _TimedNetwork:
    """The feature model with each `predict_on_batch` call's start, end and size recorded."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __getattr__(self, name):  # everything else (input_shape, ...) is the model's
        return getattr(self.model, name)

    def predict_on_batch(self, x):
        start = time.perf_counter()
        out = self.model.predict_on_batch(x)
        self.calls.append((start, time.perf_counter(), len(x)))
        return out


def extract(model, features, paths, output, batch_size, workers, chunk):
    """`extract_features` end to end, running `features` (built and traced already)."""
    import keras_r21d.features as features_module

    for stale in (output, output.with_name(output.name + ".parts")):  # never resume an older run
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)
    timed = _TimedNetwork(features)
    original = features_module.feature_model
    features_module.feature_model = lambda model, layer=LAYER: timed
    _clear_index_cache()
    try:
        with bench._Interference([]) as other:
            start = time.perf_counter()
            summary = features_module.extract_features(model, [os.fspath(p) for p in paths], output, layer=LAYER,
                                                       window=WINDOW, batch_size=batch_size, workers=workers,
                                                       chunk=chunk, progress=False, overwrite=True)
            elapsed = time.perf_counter() - start
    finally:
        features_module.feature_model = original
    calls = timed.calls
    network_s = sum(end - begin for begin, end, _ in calls)
    result = {
        "videos": summary["videos"], "windows": summary["windows"], "skipped": summary["skipped"],
        "seconds": elapsed, "windows_per_s": summary["windows"] / elapsed, "videos_per_s": summary["videos"] / elapsed,
        "network_calls": len(calls), "network_windows": sum(size for *_, size in calls),
        "network_s": network_s, "network_busy": network_s / elapsed,
        "network_clips_per_s": sum(size for *_, size in calls) / network_s if network_s else None,
        "first_batch_s": calls[0][0] - start if calls else None,
        "after_last_batch_s": start + elapsed - calls[-1][1] if calls else None,
        # From the end of the first call to the end of the last: no start-up, no HDF5 writing.
        "steady_windows_per_s": (sum(size for *_, size in calls[1:]) / (calls[-1][1] - calls[0][1])
                                 if len(calls) > 1 else None),
        "output": os.fspath(output), "output_bytes": output.stat().st_size if output.exists() else None,
        "other_cpu": other.fraction,
    }
    return result


def torch_reference(name, batch_size, seconds, tmp, log):
    """Clips/s of torchvision's `name` (fp32; contiguous and channels_last_3d, the faster
    reported) in tools/bench.py's torch worker, over about `seconds` per layout."""
    worker = bench.Worker("torch")
    try:
        modes = ["fp32", "fp32 channels_last_3d"]
        worker("build", name=name, frames=WINDOW, size=112, checkpoint=os.path.join(tmp, f"{name}.pth"),
               seed=0, modes=modes)
        common = {"batch": batch_size, "frames": WINDOW, "size": 112, "seed": 0}
        rows = {}
        for mode in modes:
            log(f"(d) torchvision {name} {mode}: warm-up, then about {seconds / len(modes):.0f} s")
            worker("run", mode=mode, repeats=1, **common)
            t = worker("run", mode=mode, repeats=1, **common)["times"][-1]
            repeats = max(2, round(seconds / len(modes) / max(t, 1e-6)))
            with bench._Interference([worker.process.pid]) as other:
                times = worker("run", mode=mode, repeats=repeats, **common)["times"]
            rows[mode] = {"clips_per_s": batch_size * len(times) / sum(times), "batches": len(times),
                          "seconds": sum(times), "other_cpu": other.fraction}
        best = max(rows, key=lambda m: rows[m]["clips_per_s"])
        return {"library": worker.info["library"], "model": name, "modes": rows, "mode": best, **rows[best]}
    finally:
        worker.close()


# ------------------------------------------------------------------ the run

def resolve_settings(model=None, batch_size=None, count=None, duration=None, seconds=None, workers=None,
                     videos=None, quick=False, torch=True):
    settings = {**DEFAULTS, **(QUICK if quick else {})}
    given = {"model": model, "batch_size": batch_size, "count": count, "duration": duration, "seconds": seconds,
             "workers": workers}
    settings.update({k: v for k, v in given.items() if v is not None})
    if model is not None and model != settings["model"]:
        settings["widths"] = None  # --quick's widths belong to its own network
    settings.update(videos=[os.fspath(v) for v in videos] if videos else None, quick=quick, torch=torch)
    return settings


def _machine():
    from keras_r21d.machine import cpu_kind, onednn_enabled

    kind = cpu_kind()
    return {"cpu": kind["name"], "vendor": kind["vendor"], "family": kind["family"], "model": kind["model"],
            "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "isa": {**kind["isa"], "amx": kind["amx"]}, "bfloat16": kind["bfloat16"],
            "tf_onednn_default": kind["tf_onednn_default"], "onednn": onednn_enabled()}


def _libraries():
    import av
    import keras

    backend = keras.backend.backend()
    version = __import__(backend).__version__ if backend != "numpy" else ""
    ffmpeg = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    return {"keras": f"keras {keras.__version__} ({backend} {version})".strip(),
            "av": f"PyAV {av.__version__} (libavcodec {ffmpeg})"}


def run_benchmark(settings, workdir=None, log=None):
    """Runs (a)-(d) as described in the module docstring; returns a dict."""
    import keras

    from keras_r21d.applications import get_model
    from keras_r21d.features import feature_model
    from keras_r21d.inference import stored_preprocessing

    start = time.perf_counter()
    log = log or bench._Progress()
    notes = []
    tmp = tempfile.mkdtemp(prefix="keras-r21d-bench-extract-")
    folder = pathlib.Path(workdir) if workdir else pathlib.Path(tmp)
    folder.mkdir(parents=True, exist_ok=True)
    result = {"machine": _machine(), "libraries": _libraries(), "settings": dict(settings), "notes": notes,
              "target": TARGET}
    try:
        if settings["videos"]:
            paths = [pathlib.Path(p) for p in settings["videos"]]
            result["source"] = {"generated": False, "count": len(paths),
                                "bytes": sum(p.stat().st_size for p in paths)}
        else:
            log(f"writing {settings['count']} test videos ({settings['width']}x{settings['height']}, "
                f"{settings['fps']} fps, {settings['duration']:g} s) into {folder}")
            paths, made = make_videos(folder, settings["count"], settings["duration"], settings["width"],
                                      settings["height"], settings["fps"], settings["stagger"])
            result["source"] = {"generated": True, "count": len(paths), **made,
                                **{k: settings[k] for k in ("width", "height", "fps", "duration")}}
        result["source"]["paths"] = [os.fspath(p) for p in paths]

        name, batch = settings["model"], settings["batch_size"]
        log(f"building {name} and its {LAYER!r} feature model (inference graph)")
        keras.utils.set_random_seed(0)
        model = get_model(name, **({"widths": tuple(settings["widths"])} if settings["widths"] else {}))
        features = feature_model(model, LAYER)
        warm_up(features, batch)
        preprocessing = stored_preprocessing(model)
        protocol = {"window": WINDOW, "stride": WINDOW, "fps": None, "unit": "frames", "short": "loop",
                    "tail": "shift", "preprocessing": preprocessing}
        result["protocol"] = protocol

        log(f"(a) {name} alone, batch {batch}: {settings['seconds']:g} s")
        first = model_alone(features, batch, settings["seconds"])
        log(f"(b) decoding + preprocessing alone, {settings['workers']} threads, {len(paths)} videos")
        result["decode"] = decode_alone(paths, protocol, settings["workers"], settings["chunk"])
        log(f"(c) extract_features, {len(paths)} videos, batch {batch}, {settings['workers']} decode threads")
        result["extract"] = extract(model, features, paths, folder / "features.h5", batch, settings["workers"],
                                    settings["chunk"])
        log(f"(a) {name} alone again: {settings['seconds']:g} s")
        second = model_alone(features, batch, settings["seconds"], seed=1)
        best = max((first, second), key=lambda r: r["clips_per_s"])
        result["model"] = {"name": name, "widths": settings["widths"], "layer": LAYER, "batch_size": batch,
                           "window": WINDOW, "runs": [first, second], **best}
        del features, model
        keras.backend.clear_session()

        skipped = {v["path"]: v["error"] for v in result["decode"]["per_video"] if v["error"]}
        if skipped or result["extract"]["skipped"]:
            notes.append(f"unreadable videos, skipped: (b) {skipped or 'none'}; (c) "
                         f"{result['extract']['skipped'] or 'none'}.")

        result["torch"] = None
        if not settings["torch"]:
            notes.append("(d) torchvision reference: not asked for (--no-torch).")
        elif settings["quick"] or settings["widths"]:
            notes.append("(d) torchvision reference: skipped (--quick's network has no torchvision twin).")
        elif name not in bench.TORCHVISION_MODELS:
            notes.append(f"(d) torchvision reference: skipped (torchvision has no {name}).")
        elif not bench._torch_installed():
            notes.append("(d) torchvision reference: skipped (torch/torchvision not installed).")
        else:
            try:
                result["torch"] = torch_reference(name, batch, settings["seconds"], tmp, log)
                notes.append(f"(d) torchvision's {name} has torchvision's (2+1)D widths (midplanes per_block); "
                             "get_model's default is the paper's (per_conv): a reference, not the same network.")
            except RuntimeError as error:
                notes.append(f"(d) torchvision reference: the torch worker failed: {str(error).splitlines()[0]}")
        _conclude(result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["wall_s"] = time.perf_counter() - start
    return result


def _conclude(result):
    """The ratio, PASS/FAIL, and what limits extraction."""
    a, b, c = result["model"]["clips_per_s"], result["decode"]["windows_per_s"], result["extract"]
    result["ratio"] = c["windows_per_s"] / a
    result["steady_ratio"] = c["steady_windows_per_s"] / a if c["steady_windows_per_s"] else None
    result["pass"] = result["ratio"] >= TARGET
    # Decoding and the network sharing the cores with no gain from overlapping: 1 / (1/a + 1/b).
    result["serial_windows_per_s"] = 1 / (1 / a + 1 / b) if b else 0.0
    notes = result["notes"]
    if result["decode"]["windows"] != c["windows"]:
        notes.append(f"(b) decoded {result['decode']['windows']} windows but (c) extracted {c['windows']}.")
    if c["network_busy"] < 0.9:
        notes.append(f"in (c) the network waited {1 - c['network_busy']:.0%} of the time (for decoded windows, "
                     f"the first of them after {c['first_batch_s']:.1f} s, and for the part and HDF5 files "
                     f"{c['after_last_batch_s']:.1f} s at the end).")
    if c["network_clips_per_s"] and c["network_clips_per_s"] < 0.9 * a:
        notes.append(f"in (c) the network ran at {c['network_clips_per_s'] / a:.0%} of its speed alone: the "
                     "decoding threads took CPU from it.")
    shares = [r.get("other_cpu") for r in (*result["model"]["runs"], result["decode"], c)]
    busy = [s for s in shares if bench._busy(s)]
    if busy:
        notes.append(f"other processes used up to {max(busy):.0%} of the CPU during the measurements: rerun on an "
                     "idle machine to trust these figures.")
    if result["settings"]["quick"]:
        notes.append("--quick: a smoke test of the script, not a measurement.")


# ------------------------------------------------------------------ the report

def _rate(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(result):
    from keras_r21d.machine import ISA_FLAGS

    machine, source, m = result["machine"], result["source"], result["model"]
    isa = machine["isa"]
    flags = " ".join(f for f in ISA_FLAGS if isa[f]) or "none of " + " ".join(ISA_FLAGS)
    onednn = {True: "on", False: "OFF (slow 3D convolutions; see keras_r21d.machine)", None: "n/a"}
    where = ", ".join(f"{k} {machine[k]}" for k in ("family", "model") if machine.get(k))
    network = m["name"] + (f" widths {tuple(m['widths'])}" if m["widths"] else "")
    if source["generated"]:
        frames = sorted(set(source["frames"]))
        videos = (f"{source['count']} generated videos, {source['width']}x{source['height']}, {source['fps']} fps, "
                  f"{'/'.join(map(str, frames))} frames, {source['codec']}, {source['bytes'] / 2**20:.2f} MiB in all "
                  f"({8e-3 * source['bytes'] / (sum(source['frames']) / source['fps']):.0f} kbit/s)")
    else:
        videos = f"{source['count']} given videos, {source['bytes'] / 2**20:.2f} MiB in all"
    d, c, t = result["decode"], result["extract"], result["torch"]
    lines = [
        (f"Machine: {machine['cpu']} ({machine.get('vendor', '?')}{', ' + where if where else ''}), "
         f"{machine['cores']} cores; ISA: {flags}; AMX: {'yes' if isa['amx'] else 'no'}."),
        f"TensorFlow oneDNN kernels: {onednn[machine['onednn']]}"
        + ("" if machine["tf_onednn_default"] else "; TensorFlow's own default on this CPU: off") + ".",
        "Libraries: " + "; ".join(result["libraries"].values()) + ".",
        (f"Network: {network}, {LAYER!r} features, inference graph, float32, random weights; "
         f"{m['window']}x112x112 clips, batch {m['batch_size']}."),
        (f"Videos: {videos}; windows of {m['window']} frames side by side, the tail shifted; "
         f"{d['workers']} decoding threads."),
        "",
    ]
    header = f"{'':<4}{'what':<58} {'windows/s':>9} {'videos/s':>8} {'windows':>7} {'seconds':>7} {'other':>5}"
    lines += [header, "-" * len(header)]

    def row(tag, what, rate, videos, count, seconds, other):
        lines.append(f"{tag:<4}{what:<58} {_rate(rate):>9} {_rate(videos, 3):>8} {count:>7} {seconds:>7.1f} "
                     f"{bench._share(other):>5}")

    runs = " and ".join(f"{r['clips_per_s']:.2f}" for r in m["runs"])
    row("(a)", "model alone, random preprocessed batches (clips/s)", m["clips_per_s"], None, m["clips"],
        m["seconds"], m["other_cpu"])
    row("(b)", f"decoding + preprocessing alone, {d['workers']} threads, no network", d["windows_per_s"],
        d["videos_per_s"], d["windows"], d["seconds"], d["other_cpu"])
    row("(c)", "extract_features end to end (HDF5 written)", c["windows_per_s"], c["videos_per_s"],
        c["windows"], c["seconds"], c["other_cpu"])
    if t:
        row("(d)", f"torchvision {t['model']} {t['mode']} (reference, clips/s)", t["clips_per_s"], None,
            t["batches"] * m["batch_size"], t["seconds"], t["other_cpu"])
    lines += [
        "",
        f"(a) ran before (b) and after (c): {runs} clips/s; the faster is the reference.",
        (f"Inside (c): the network ran {c['network_s']:.1f} of {c['seconds']:.1f} s ({c['network_busy']:.0%}) at "
         f"{_rate(c['network_clips_per_s'])} clips/s; first batch after {_rate(c['first_batch_s'], 1)} s; "
         f"{_rate(c['after_last_batch_s'], 1)} s after the last batch (part files, HDF5); steady rate (first "
         f"batch to last) {_rate(c['steady_windows_per_s'])} windows/s."),
        (f"Decoding alone runs at {d['windows_per_s'] / m['clips_per_s']:.1f}x the model's rate; sharing the "
         f"cores with no overlap at all would give {result['serial_windows_per_s']:.2f} windows/s."),
        "",
        f"Target: (c) windows/s / (a) clips/s = {result['ratio']:.0%} >= {TARGET:.0%}  "
        f"{'PASS' if result['pass'] else 'FAIL'}"
        + (f"   (steady rate: {result['steady_ratio']:.0%})" if result["steady_ratio"] else ""),
    ]
    lines += [f"Note: {note}" for note in result["notes"]]
    lines.append(f"Total wall time: {result['wall_s']:.0f} s.")
    return "\n".join(lines)


def parse_args(argv=None):
    import argparse

    from keras_r21d.applications import list_models
    from keras_r21d.cli import POSITIVE_FLOAT, POSITIVE_INT

    parser = argparse.ArgumentParser(
        prog="python tools/bench_extract.py",
        description="windows/s of extract_features against clips/s of its network alone (is decoding the "
                    "bottleneck?)")
    parser.add_argument("--model", choices=list_models(), default=None, help="network (default r2plus1d_18)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=None, help="windows per network call (default 8)")
    parser.add_argument("--videos", nargs="+", default=None,
                        help="video files or folders to extract (default: generated test videos)")
    parser.add_argument("--count", type=POSITIVE_INT, default=None, help="test videos to generate (default 6)")
    parser.add_argument("--duration", type=POSITIVE_FLOAT, default=None,
                        help="seconds per generated video (default 10)")
    parser.add_argument("--seconds", type=POSITIVE_FLOAT, default=None,
                        help="seconds each timing of the network alone lasts, at least 3 batches (default 30)")
    parser.add_argument("--workers", type=POSITIVE_INT, default=None, help="decoding threads (default 2)")
    parser.add_argument("--workdir", help="write the test videos and the HDF5 file here and keep them "
                                          "(default: a temporary folder, removed)")
    parser.add_argument("--no-torch", action="store_true", help="skip the torchvision reference (d)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings: r3d_10 at widths (4, 4, 8, 8), 2 short videos (a smoke test)")
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


def main(argv=None):
    """Runs the benchmark; prints the table (and writes --json)."""
    import json

    # TensorFlow's start-up messages stay out of the report (keras_r21d.machine); the
    # variable is read when keras_r21d is first imported, just below.
    os.environ.setdefault("KERAS_R21D_QUIET_TENSORFLOW", "1")
    args = parse_args(argv)
    videos = None
    if args.videos:
        from keras_r21d.data.splits import find_videos

        try:
            videos = find_videos(args.videos)
        except FileNotFoundError as error:
            print(f"bench_extract: error: {error}", file=sys.stderr)
            return 2
        if not videos:
            print(f"bench_extract: error: no video found in {' '.join(args.videos)}.", file=sys.stderr)
            return 2
    settings = resolve_settings(model=args.model, batch_size=args.batch_size, count=args.count,
                                duration=args.duration, seconds=args.seconds, workers=args.workers,
                                videos=videos, quick=args.quick, torch=not args.no_torch)
    result = run_benchmark(settings, workdir=args.workdir)
    print(format_table(result), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
