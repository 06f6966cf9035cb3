"""CPU benchmark: the Keras networks against torchvision's.

    python tools/bench.py [--models r2plus1d_18 r3d_18 mc3_18] [--batch-sizes 1 8] [--rounds 3]
                          [--frames 16] [--size 112] [--modes ...] [--no-torch] [--no-train]
                          [--quick] [--json OUT]


Measures the machine (CPU model, ISA flags, float32 and bfloat16 matmul peaks), then
for each network builds the torchvision model (when torch is installed; seeded random
weights with random batch-norm statistics, saved as a .pth) and the keras-r21d model
converted from that file, so both sides hold the same weights. It checks that they
agree (max |logit difference| on one shared clip), warms every mode up, alternates the
two sides over several rounds, and prints per network, batch size, side and mode:
clips/s, ms per batch, GFLOP/s, the fraction of the machine's peak, the peak RSS of the
side's process and the keras/torch ratio; then one training step of each side, and the
targets as PASS/FAIL. `--json OUT` writes everything to a file.

Each side runs in its own worker process: importing TensorFlow before torchvision
crashes, and each side's peak RSS is then its own. The workers are
`python tools/bench.py --worker keras|torch`; they read one JSON command per line
on stdin and answer one JSON line on a private copy of their stdout (whatever the
libraries print goes to stderr). This module imports neither TensorFlow nor torch
itself; the worker imports one of them.

Timing: in each round a mode runs `repeats` batches back to back (repeats chosen from
the warm-up so that a round lasts about `round_s` seconds); a round's figure is its
mean time per batch; the table reports the best round (the median round is in the
JSON).
"""

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback

# Modes: one line each; precision selects the peak a mode is measured against.
# Keras: name -> (precision, the `optimize_for_inference` precision, or None for the
# model as `get_model` returns it, run by `predict_on_batch`).
KERAS_MODES = {
    "float32": ("float32", None),
    "float32 optimized": ("float32", "float32"),
    "bfloat16": ("bfloat16", "bfloat16"),
}
# torch: name -> (precision, channels_last_3d); bfloat16 means torch.autocast("cpu").
TORCH_MODES = {
    "fp32": ("float32", False),
    "fp32 channels_last_3d": ("float32", True),
    "bf16 autocast": ("bfloat16", False),
    "bf16 autocast channels_last_3d": ("bfloat16", True),
}
ALL_MODES = [*KERAS_MODES, *TORCH_MODES]
BFLOAT16_MODES = [m for m, (precision, _) in [*KERAS_MODES.items(), *TORCH_MODES.items()] if precision == "bfloat16"]
TORCHVISION_MODELS = ("r2plus1d_18", "r3d_18", "mc3_18")

DEFAULTS = {
    "models": ["r2plus1d_18", "r3d_18", "mc3_18"], "batch_sizes": [1, 8], "frames": 16, "size": 112,
    "rounds": 3, "round_s": 1.0, "train_frames": 8, "train_batch": 8, "peak_sizes": [2048, 4096],
    "peak_runs": 4, "logit_batch": 1, "seed": 0,
}
QUICK = {
    "models": ["r2plus1d_18"], "batch_sizes": [1, 2], "frames": 4, "size": 32, "rounds": 1,
    "round_s": 0.05, "train_frames": 4, "train_batch": 2, "peak_sizes": [256, 512], "peak_runs": 2,
}
TARGET_MODEL = "r2plus1d_18"
TARGETS = {"fastest": 1.0, "fastest_amx": 1.5, "bf16_peak_fraction": 0.85, "float32": 1.3, "train": 1.0}
# Modes in bfloat16 are timed only on CPUs with bfloat16 instructions (AVX512_BF16 or AMX):
# elsewhere it is emulated, and one R(2+1)D-18 batch or one large matmul takes minutes.


# ------------------------------------------------------------------ the machine

def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _best_gflops(matmul, operands, sizes, runs):
    """Best GFLOP/s of `matmul` over square sizes; one untimed call per size first."""
    best = 0.0
    for n in sizes:
        a, b = operands(n)
        matmul(a, b)
        for _ in range(runs):
            start = time.perf_counter()
            matmul(a, b)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def numpy_peak(sizes, runs):
    import numpy as np

    rng = np.random.default_rng(0)

    def operands(n):
        return rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)

    return {"float32": _best_gflops(np.matmul, operands, sizes, runs)}


def _clips(batch, frames, size, seed):
    """The shared input: N x T x H x W x 3 float32, the same in both workers."""
    import numpy as np

    return np.random.default_rng(seed + batch).standard_normal((batch, frames, size, size, 3), np.float32)


def _labels(batch, classes, seed):
    import numpy as np

    return np.random.default_rng(seed + 1000 + batch).integers(0, classes, batch)


# ------------------------------------------------------------------ the workers

class _Side:
    """What both workers share: `runners` (mode -> function of the input batch) and
    `_input` (the cached input of a shape), timed the same way on both sides."""

    def do_run(self, mode, batch, frames, size, seed, repeats):
        run, x = self.runners[mode], self._input(batch, frames, size, seed)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)
        return {"times": times}


class _KerasSide(_Side):
    def __init__(self):
        import keras

        import keras_r21d  # noqa: F401 - before Keras: TensorFlow's oneDNN kernels (keras_r21d.machine)
        from keras_r21d.machine import onednn_enabled

        self.keras = keras
        self.onednn = onednn_enabled()
        self.runners, self.inputs = {}, {}
        backend = keras.backend.backend()
        version = __import__(backend).__version__ if backend != "numpy" else ""
        self.library = f"keras {keras.__version__} ({backend} {version})".strip()

    def info(self):
        return {"library": self.library, "backend": self.keras.backend.backend(), "onednn": self.onednn}

    def do_peak(self, sizes, runs, dtypes):
        from keras import ops

        def operands(dtype):
            def make(n):
                a = ops.cast(self.keras.random.normal((n, n), seed=1), dtype)
                return a, ops.cast(self.keras.random.normal((n, n), seed=2), dtype)
            return make

        def matmul(a, b):  # a 1-element slice back to NumPy waits for the product on any backend
            return ops.convert_to_numpy(ops.cast(ops.matmul(a, b)[0, 0], "float32"))

        return {"library": self.keras.backend.backend(),
                "gflops": {dtype: _best_gflops(matmul, operands(dtype), sizes, runs) for dtype in dtypes}}

    def _network(self, name, frames, size, checkpoint, classifier=None):
        from keras_r21d.applications import get_model

        shape = (frames, size, size, 3)
        if checkpoint is None:  # no torchvision twin: the registry's network, seeded
            self.keras.utils.set_random_seed(0)
            return get_model(name, input_shape=shape, classifier_activation=classifier)
        from keras_r21d.presets.checkpoints import read_checkpoint
        from keras_r21d.presets.convert import assign_weights, detect_layout, infer_architecture

        tensors = read_checkpoint(checkpoint)
        layout = detect_layout(tensors, "torch")
        config = infer_architecture(tensors, layout)
        if config.pop("architecture") != name:
            raise ValueError(f"{checkpoint} is not a {name}.")
        model = get_model(name, input_shape=shape, classifier_activation=classifier, **config)
        assign_weights(model, tensors, layout)
        return model

    def do_build(self, name, frames, size, checkpoint=None, modes=None):
        from keras_r21d.models.complexity import count_macs, count_params

        start = time.perf_counter()
        self.do_free()
        model = self._network(name, frames, size, checkpoint)
        self.model, info = model, {}
        for mode, (precision, optimized) in KERAS_MODES.items():
            if modes is not None and mode not in modes:
                continue
            if optimized is None:
                self.runners[mode] = model.predict_on_batch
                info[mode] = {"precision": precision, "available": True}
                continue
            try:
                try:
                    from keras_r21d.models.optimize import optimize_for_inference
                except ImportError:
                    from keras_r21d import optimize_for_inference
                fast = optimize_for_inference(model, precision=optimized)
            except Exception as error:  # noqa: BLE001 - reported as "not available", the rest runs
                info[mode] = {"precision": precision, "available": False,
                              "note": f"not available: {type(error).__name__}: {error}".splitlines()[0][:160]}
                continue
            self.runners[mode] = fast.predict_on_batch
            info[mode] = {"precision": precision, "available": True}
        return {"macs": count_macs(model), "params": count_params(model), "modes": info,
                "build_s": time.perf_counter() - start}

    def do_train_build(self, name, frames, size, batch, checkpoint=None, seed=0):
        keras = self.keras
        self.do_free()
        model = self._network(name, frames, size, checkpoint)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = _clips(batch, frames, size, seed)
        y = _labels(batch, model.output_shape[-1], seed)
        self.model = model
        self.runners["train"] = lambda _: model.train_on_batch(x, y)
        from keras_r21d.models.complexity import count_macs

        return {"macs": count_macs(model)}

    def _input(self, batch, frames, size, seed):
        key = (batch, frames, size, seed)
        if key not in self.inputs:
            self.inputs[key] = _clips(batch, frames, size, seed)
        return self.inputs[key]

    def do_logits(self, batch, frames, size, seed):
        import numpy as np

        x = self._input(batch, frames, size, seed)
        return {"logits": {mode: np.asarray(run(x), np.float32).tolist()
                           for mode, run in self.runners.items()}}

    def do_free(self):
        import gc

        self.runners, self.inputs, self.model = {}, {}, None
        self.keras.backend.clear_session()
        gc.collect()
        return {}


class _TorchSide(_Side):
    def __init__(self):
        sys.modules.setdefault("triton", None)  # not needed on the CPU
        import torch
        import torchvision

        self.torch, self.torchvision = torch, torchvision
        torch.set_num_threads(os.cpu_count())
        self.runners, self.inputs = {}, {}

    def info(self):
        return {"library": f"torch {self.torch.__version__}, torchvision {self.torchvision.__version__}",
                "threads": self.torch.get_num_threads()}

    def do_peak(self, sizes, runs, dtypes):
        torch = self.torch

        def operands(dtype):
            g = torch.Generator().manual_seed(0)
            return lambda n: (torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype))

        def matmul(a, b):
            with torch.inference_mode():
                torch.mm(a, b)

        return {"library": "torch", "gflops": {dtype: _best_gflops(matmul, operands(getattr(torch, dtype)), sizes, runs)
                                               for dtype in dtypes}}

    def _network(self, name, seed, checkpoint):
        return seeded_torchvision(name, seed, checkpoint)

    def do_build(self, name, frames, size, checkpoint, seed=0, modes=None):
        import copy

        torch = self.torch
        start = time.perf_counter()
        self.do_free()
        model = self._network(name, seed, checkpoint).eval()
        last = copy.deepcopy(model).to(memory_format=torch.channels_last_3d)
        info = {}
        for mode, (precision, channels_last) in TORCH_MODES.items():
            if modes is not None and mode not in modes:
                continue
            self.runners[mode] = self._runner(last if channels_last else model, precision, channels_last)
            info[mode] = {"precision": precision, "available": True, "channels_last_3d": channels_last}
        return {"params": sum(p.numel() for p in model.parameters()), "modes": info,
                "build_s": time.perf_counter() - start}

    def _runner(self, model, precision, channels_last):
        torch = self.torch
        bf16 = precision == "bfloat16"

        def run(x):
            if channels_last:
                x = x["channels_last"]
            else:
                x = x["contiguous"]
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(x)
        return run

    def _input(self, batch, frames, size, seed):
        torch = self.torch
        key = (batch, frames, size, seed)
        if key not in self.inputs:
            x = torch.from_numpy(_clips(batch, frames, size, seed).transpose(0, 4, 1, 2, 3).copy())
            self.inputs[key] = {"contiguous": x.contiguous(),
                                "channels_last": x.contiguous(memory_format=torch.channels_last_3d)}
        return self.inputs[key]

    def do_logits(self, batch, frames, size, seed):
        x = self._input(batch, frames, size, seed)
        return {"logits": {mode: run(x).float().numpy().tolist() for mode, run in self.runners.items()}}

    def do_train_build(self, name, frames, size, batch, checkpoint, seed=0):
        torch = self.torch
        self.do_free()
        model = self._network(name, seed, checkpoint).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.from_numpy(_clips(batch, frames, size, seed).transpose(0, 4, 1, 2, 3).copy())
        y = torch.from_numpy(_labels(batch, model.fc.out_features, seed))

        def step(_):
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        self.runners["train"] = step
        return {}

    def do_free(self):
        import gc

        self.runners, self.inputs = {}, {}
        gc.collect()
        return {}


def seeded_torchvision(name, seed, checkpoint):
    """torchvision's network `name`, seeded, with random BN statistics (as trained ones
    are); its state_dict is written to `checkpoint` for the Keras side (also used by
    tools/bench_gpu.py)."""
    import torch
    from torchvision.models import video

    torch.manual_seed(seed)
    model = getattr(video, name)()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    torch.save(model.state_dict(), checkpoint)
    return model


def _serve(side):
    """A worker's loop: one JSON command per line in, one JSON answer per line out."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the libraries print goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    try:
        worker = _KerasSide() if side == "keras" else _TorchSide()
    except Exception:  # noqa: BLE001 - sent to the parent
        protocol.write(json.dumps({"ok": False, "error": traceback.format_exc()}) + "\n")
        return 1
    protocol.write(json.dumps({"ok": True, **worker.info(), "rss_peak_mb": _peak_rss_mb()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = getattr(worker, "do_" + request.pop("cmd"))(**request)
            answer = {"ok": True, **answer, "rss_peak_mb": _peak_rss_mb()}
        except Exception:  # noqa: BLE001 - sent to the parent
            answer = {"ok": False, "error": traceback.format_exc()}
        protocol.write(json.dumps(answer) + "\n")
    return 0


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, side):
        self.side = side
        # TensorFlow's start-up noise stays out of the report (keras_r21d.machine).
        env = dict(os.environ, KERAS_R21D_QUIET_TENSORFLOW="1")
        # A fresh interpreter on this script: keras_r21d imports Keras (and TensorFlow),
        # which must not come before torchvision in the torch worker.
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", side],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.info = self._answer("start")

    def _answer(self, what):
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"the {self.side} worker died during {what!r} (exit status {code}); "
                               "see its messages above.")
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise RuntimeError(f"the {self.side} worker failed at {what!r}:\n{answer['error']}")
        return answer

    def __call__(self, cmd, **kwargs):
        self.process.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.process.stdin.flush()
        return self._answer(cmd)

    def close(self):
        try:
            self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


# ------------------------------------------------------------------ the benchmark

def _torch_installed():
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))


def resolve_settings(models=None, batch_sizes=None, frames=None, size=None, rounds=None, modes=None,
                     torch=True, train=True, quick=False):
    """The run's settings: the defaults (or `--quick`'s), then what was given."""
    from keras_r21d.applications import list_models

    settings = {**DEFAULTS, **(QUICK if quick else {})}
    given = {"models": models, "batch_sizes": batch_sizes, "frames": frames, "size": size, "rounds": rounds}
    settings.update({k: v for k, v in given.items() if v is not None})
    unknown = [m for m in settings["models"] if m not in list_models()]
    if unknown:
        raise ValueError(f"Unknown model(s) {', '.join(unknown)}; choices: {', '.join(list_models())}.")
    unknown = [m for m in modes or () if m not in ALL_MODES]
    if unknown:
        raise ValueError(f"Unknown mode(s) {unknown}; keras modes: {list(KERAS_MODES)}, "
                         f"torch modes: {list(TORCH_MODES)}.")
    for key in ("frames", "size", "rounds"):
        if settings[key] < 1:
            raise ValueError(f"--{key} must be at least 1.")
    if not settings["batch_sizes"] or min(settings["batch_sizes"]) < 1:
        raise ValueError("--batch-sizes must be at least 1.")
    settings["train_frames"] = min(settings["train_frames"], settings["frames"])
    settings.update(modes=list(modes) if modes else None, torch=torch, train=train, quick=quick)
    return settings


class _Progress:
    """Progress lines on stderr, with the seconds since the start."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self, text):
        print(f"bench [{time.perf_counter() - self.start:4.0f} s] {text}", file=sys.stderr, flush=True)


def _median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def _max_diff(a, b):
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _busy_cpu_s():
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Interference:
    """The share of the machine's CPU that processes other than ours used over a span."""

    def __init__(self, pids):
        self.pids = [os.getpid(), *pids]

    def _sample(self):
        own = [_process_cpu_s(pid) for pid in self.pids]
        return time.perf_counter(), _busy_cpu_s(), None if None in own else sum(own)

    def __enter__(self):
        self.start = self._sample()
        self.fraction = None
        return self

    def __exit__(self, *exc):
        (t0, busy0, own0), (t1, busy1, own1) = self.start, self._sample()
        if None not in (busy0, busy1, own0, own1) and t1 > t0:
            self.fraction = max(0.0, ((busy1 - busy0) - (own1 - own0)) / ((t1 - t0) * os.cpu_count()))


def _peak_summary(measured, sizes, runs, other_cpu):
    peak = {"measured_gflops": measured, "sizes": sizes, "runs": runs, "other_cpu": other_cpu}
    for dtype in ("float32", "bfloat16"):
        values = [(lib, g[dtype]) for lib, g in measured.items() if dtype in g]
        if values:
            library, value = max(values, key=lambda item: item[1])
            peak[dtype] = {"gflops": value, "library": library}
    peak["best"] = max(peak[d]["gflops"] for d in ("float32", "bfloat16") if d in peak)
    return peak


def _busy(other_cpu):
    return other_cpu is not None and other_cpu > 0.05


def _best_of_peaks(first, second):
    """Two peak measurements merged: the best per library and dtype."""
    measured = {lib: dict(gflops) for lib, gflops in first["measured_gflops"].items()}
    for lib, gflops in second["measured_gflops"].items():
        for dtype, value in gflops.items():
            measured.setdefault(lib, {})[dtype] = max(value, measured.get(lib, {}).get(dtype, 0.0))
    shares = [x for x in (first["other_cpu"], second["other_cpu"]) if x is not None]
    return _peak_summary(measured, first["sizes"], first["runs"], min(shares) if shares else None)


def _peak(workers, sizes, runs, dtypes):
    """Best GFLOP/s of square matmuls per library and dtype; the best per dtype is the peak."""
    with _Interference([w.process.pid for w in workers.values()]) as other:
        measured = {"numpy": numpy_peak(sizes, runs)}
        for worker in workers.values():
            answer = worker("peak", sizes=sizes, runs=runs, dtypes=dtypes)
            measured[answer["library"]] = answer["gflops"]
    return _peak_summary(measured, sizes, runs, other.fraction)


def _time_modes(workers, modes, shape, rounds, round_s, seed):
    """Warms every (side, mode) up, then alternates the sides over `rounds` rounds.

    Returns `{(side, mode): {"round_s_per_batch": [...], "round_other_cpu": [...],
    "rss_peak_mb": ...}}`; `round_other_cpu` is the share of the machine's CPU used by
    other processes during each round (0 on a quiet machine).
    """
    pids = [worker.process.pid for worker in workers.values()]
    batch, frames, size = shape
    common = {"batch": batch, "frames": frames, "size": size, "seed": seed}
    repeats, results = {}, {}
    for side, worker in workers.items():
        for mode in modes[side]:
            t = worker("run", mode=mode, repeats=1, **common)["times"][-1]  # tracing, kernel selection
            if t < 2 * round_s:  # and a second call when it is cheap
                t = worker("run", mode=mode, repeats=1, **common)["times"][-1]
            repeats[side, mode] = max(1, min(50, round(round_s / max(t, 1e-6))))
            results[side, mode] = {"round_s_per_batch": [], "round_other_cpu": [], "repeats": repeats[side, mode]}
    order = list(workers)
    for r in range(rounds):
        for side in order if r % 2 == 0 else order[::-1]:
            for mode in modes[side]:
                with _Interference(pids) as other:
                    answer = workers[side]("run", mode=mode, repeats=repeats[side, mode], **common)
                results[side, mode]["round_s_per_batch"].append(sum(answer["times"]) / len(answer["times"]))
                results[side, mode]["round_other_cpu"].append(other.fraction)
                results[side, mode]["rss_peak_mb"] = answer["rss_peak_mb"]
    return results


def run_benchmark(settings, log=None):
    """Runs the benchmark described by `settings` (see `resolve_settings`); returns a dict."""
    import shutil

    from keras_r21d.machine import cpu_kind

    start = time.perf_counter()
    log = log or _Progress()
    notes = []
    use_torch = settings["torch"]
    if use_torch and not _torch_installed():
        notes.append("torch/torchvision not installed: Keras side only.")
        use_torch = False
    kind = cpu_kind()
    peak_dtypes = ["float32", "bfloat16"] if kind["bfloat16"] else ["float32"]
    skipped = [] if settings["modes"] or kind["bfloat16"] else BFLOAT16_MODES
    if skipped:
        notes.append("no bfloat16 instructions on this CPU (bfloat16 is emulated there, minutes per batch): "
                     f"not timed: {', '.join(skipped)} and the bfloat16 matmul peak.")
    timed_modes = settings["modes"] or [m for m in ALL_MODES if m not in skipped]
    result = {
        "machine": {"cpu": kind["name"], "vendor": kind["vendor"], "family": kind["family"], "model": kind["model"],
                    "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "isa": {**kind["isa"], "amx": kind["amx"]},
                    "bfloat16": kind["bfloat16"], "tf_onednn_default": kind["tf_onednn_default"]},
        "settings": {k: v for k, v in settings.items()}, "notes": notes, "peak": {}, "inference": [],
        "logit_check": [], "train": [], "targets": [],
    }
    tmp = tempfile.mkdtemp(prefix="keras-r21d-bench-")
    workers = {}
    try:
        log("starting the keras worker" + (" and the torch worker" if use_torch else ""))
        workers["keras"] = Worker("keras")
        if use_torch:
            try:
                workers["torch"] = Worker("torch")
            except RuntimeError as error:  # torch installed but broken: the Keras side still runs
                notes.append(f"the torch worker did not start, Keras side only: {str(error).splitlines()[0]}")
                use_torch = False
        result["libraries"] = {side: w.info["library"] for side, w in workers.items()}
        result["machine"]["onednn"] = workers["keras"].info.get("onednn")

        # The machine's peak: the best large square matmul per dtype over the libraries.
        log("matmul peak (numpy, " + ", ".join(workers) + ")")
        result["peak"] = _peak(workers, settings["peak_sizes"], settings["peak_runs"], peak_dtypes)

        frames, size, seed = settings["frames"], settings["size"], settings["seed"]
        for index, name in enumerate(settings["models"]):
            twin = use_torch and name in TORCHVISION_MODELS
            sides = {"keras": workers["keras"], **({"torch": workers["torch"]} if twin else {})}
            if use_torch and not twin:
                notes.append(f"{name}: torchvision has no such network; Keras side only, own weights.")
            log(f"building {name} ({frames}x{size}x{size})")
            checkpoint = os.path.join(tmp, f"{name}.pth") if twin else None
            built = {}
            if twin:
                built["torch"] = sides["torch"]("build", name=name, frames=frames, size=size,
                                                checkpoint=checkpoint, seed=seed, modes=timed_modes)
            built["keras"] = sides["keras"]("build", name=name, frames=frames, size=size,
                                            checkpoint=checkpoint, modes=timed_modes)
            macs = built["keras"]["macs"]
            for mode, info in built["keras"]["modes"].items():
                if not info["available"]:
                    notes.append(f"{name}: keras {mode}: {info['note']}")
            modes = {side: [m for m, i in b["modes"].items() if i["available"]] for side, b in built.items()}

            # Correctness: every mode on one shared clip against the float32 reference.
            common = {"batch": settings["logit_batch"], "frames": frames, "size": size, "seed": seed}
            logits = {side: sides[side]("logits", **common)["logits"] for side in sides}
            reference = ("torch", "fp32") if twin and "fp32" in logits["torch"] else ("keras", "float32")
            ref = logits.get(reference[0], {}).get(reference[1])
            for side, per_mode in logits.items():
                for mode, value in per_mode.items():
                    if ref is not None and (side, mode) != reference:
                        result["logit_check"].append({
                            "model": name, "side": side, "mode": mode, "reference": " ".join(reference),
                            "max_abs_diff": _max_diff(value, ref)})

            batch_sizes = settings["batch_sizes"] if index == 0 else settings["batch_sizes"][:1]
            for batch in batch_sizes:
                log(f"{name} batch {batch}: warm-up, then {settings['rounds']} alternating round(s)")
                timed = _time_modes(sides, modes, (batch, frames, size), settings["rounds"],
                                    settings["round_s"], seed)
                for (side, mode), t in timed.items():
                    best = min(t["round_s_per_batch"])
                    precision = built[side]["modes"][mode]["precision"]
                    diff = next((c["max_abs_diff"] for c in result["logit_check"]
                                 if (c["model"], c["side"], c["mode"]) == (name, side, mode)), None)
                    result["inference"].append({
                        "model": name, "frames": frames, "size": size, "batch": batch, "side": side,
                        "mode": mode, "precision": precision, "macs_per_clip": macs,
                        "flops_per_clip": 2 * macs, "params": built["keras"]["params"],
                        "s_per_batch": best, "s_per_batch_median": _median(t["round_s_per_batch"]),
                        "round_s_per_batch": t["round_s_per_batch"], "repeats_per_round": t["repeats"],
                        "round_other_cpu": t["round_other_cpu"],
                        "other_cpu": t["round_other_cpu"][t["round_s_per_batch"].index(best)],
                        "ms_per_batch": 1e3 * best, "clips_per_s": batch / best,
                        "gflops": 2 * macs * batch / best / 1e9, "rss_peak_mb": t["rss_peak_mb"],
                        "max_abs_logit_diff": diff,
                    })
            for worker in sides.values():
                worker("free")

        if settings["train"]:
            _train(result, workers, use_torch, settings, tmp, log)
        if _busy(result["peak"]["other_cpu"]):
            log("matmul peak again: other processes were busy the first time")
            result["peak"] = _best_of_peaks(result["peak"], _peak(workers, settings["peak_sizes"],
                                                                  settings["peak_runs"], peak_dtypes))
            if _busy(result["peak"]["other_cpu"]):
                notes.append(f"other processes used {result['peak']['other_cpu']:.0%} of the CPU or more while "
                             "the matmul peak was measured (twice): the peak may be underestimated.")
        _ratios(result)
        _targets(result)
        _interference_note(result)
    finally:
        for worker in workers.values():
            worker.close()
        shutil.rmtree(tmp, ignore_errors=True)
    result["wall_s"] = time.perf_counter() - start
    return result


def _train(result, workers, use_torch, settings, tmp, log):
    name, frames, size = settings["models"][0], settings["train_frames"], settings["size"]
    batch, seed = settings["train_batch"], settings["seed"]
    twin = use_torch and name in TORCHVISION_MODELS
    sides = {"keras": workers["keras"], **({"torch": workers["torch"]} if twin else {})}
    log(f"training step, {name} {frames}x{size}x{size} batch {batch}")
    checkpoint = os.path.join(tmp, f"{name}_train.pth") if twin else None
    built = {side: sides[side]("train_build", name=name, frames=frames, size=size, batch=batch,
                               checkpoint=checkpoint, seed=seed)
             for side in ("torch", "keras") if side in sides}
    # A training step costs about 3 forward passes (forward, gradients of the activations,
    # gradients of the weights): the usual estimate, used for GFLOP/s and % of peak.
    flops = 3 * 2 * built["keras"]["macs"]
    # A round of training is a single step or more: steps are the slow part.
    timed = _time_modes(sides, {side: ["train"] for side in sides}, (batch, frames, size),
                        settings["rounds"], settings["round_s"], seed)
    for (side, _), t in timed.items():
        best = min(t["round_s_per_batch"])
        result["train"].append({
            "model": name, "frames": frames, "size": size, "batch": batch, "side": side,
            "mode": "train fp32 SGD", "s_per_step": best, "s_per_step_median": _median(t["round_s_per_batch"]),
            "round_s_per_step": t["round_s_per_batch"], "round_other_cpu": t["round_other_cpu"],
            "other_cpu": t["round_other_cpu"][t["round_s_per_batch"].index(best)],
            "ms_per_step": 1e3 * best, "clips_per_s": batch / best,
            "flops_per_clip_estimate": flops, "gflops": flops * batch / best / 1e9,
            "rss_peak_mb": t["rss_peak_mb"],
        })
    for worker in sides.values():
        worker("free")


def _interference_note(result):
    """Says when other processes took CPU time during the timed rounds, or a mode beat the peak."""
    over = [row for row in result["inference"] if row["fraction_of_peak"] > 1]
    if over:
        result["notes"].append(f"{len(over)} row(s) run faster than the measured matmul peak of their precision: "
                               "that peak is an underestimate (or the mode does its math in another precision).")
    rows = result["inference"] + result["train"]
    shares = [share for row in rows for share in row["round_other_cpu"] if share is not None]
    if not shares:
        return
    reported = [row for row in rows if row["other_cpu"] is not None]
    result["other_cpu_max"] = max(shares)
    result["other_cpu_max_reported"] = max((row["other_cpu"] for row in reported), default=None)
    worst = max(reported, key=lambda row: row["other_cpu"], default=None)
    if worst is not None and _busy(worst["other_cpu"]):
        result["notes"].append(
            f"other processes used up to {worst['other_cpu']:.0%} of the CPU in a reported round ({worst['side']} "
            f"{worst['mode']}, batch {worst['batch']}): rerun on an idle machine to trust these figures.")
    elif _busy(result["other_cpu_max"]):
        disturbed = sum(_busy(share) for share in shares)
        result["notes"].append(
            f"other processes used up to {result['other_cpu_max']:.0%} of the CPU in {disturbed} of {len(shares)} "
            f"timed rounds; no reported (best) round had more than {result['other_cpu_max_reported']:.0%}.")


def _ratios(result):
    """Fractions of peak; each keras row against the fastest torch mode of its precision."""
    peak = result["peak"]
    for row in result["inference"]:
        reference = peak.get(row["precision"], {}).get("gflops") or peak["best"]
        row["fraction_of_peak"] = row["gflops"] / reference
        row["fraction_of_best_peak"] = row["gflops"] / peak["best"]
        row["ratio_vs_torch"], row["compared_with"] = None, None
    for row in result["inference"]:
        if row["side"] != "keras":
            continue
        torch_rows = [r for r in result["inference"] if r["side"] == "torch"
                      and (r["model"], r["batch"]) == (row["model"], row["batch"])]
        same = [r for r in torch_rows if r["precision"] == row["precision"]] or torch_rows
        if same:
            best = max(same, key=lambda r: r["clips_per_s"])
            row["ratio_vs_torch"] = row["clips_per_s"] / best["clips_per_s"]
            row["compared_with"] = best["mode"]
    for row in result["train"]:
        row["fraction_of_peak"] = row["gflops"] / peak["float32"]["gflops"]
    train = {row["side"]: row for row in result["train"]}
    if "torch" in train:
        train["keras"]["ratio_vs_torch"] = train["keras"]["clips_per_s"] / train["torch"]["clips_per_s"]


def _targets(result):
    """Issue 10's goals, from the measured numbers."""
    amx = result["machine"]["isa"]["amx"]
    targets = result["targets"]
    configs = sorted({(r["model"], r["batch"]) for r in result["inference"]},
                     key=lambda c: [r["model"] for r in result["inference"]].index(c[0]) * 1000 + c[1])
    # The bfloat16-peak goal is for CPUs with bfloat16 arithmetic but no AMX (there bf16 is the
    # fast precision); without bfloat16 instructions there is no such peak.
    bf16_peak = result["peak"].get("bfloat16", {}).get("gflops") if not amx else None
    for model, batch in configs:
        rows = [r for r in result["inference"] if (r["model"], r["batch"]) == (model, batch)]
        keras = [r for r in rows if r["side"] == "keras"]
        torch = [r for r in rows if r["side"] == "torch"]
        where = f"{model} batch {batch}"
        if not keras:
            continue
        fastest = max(keras, key=lambda r: r["clips_per_s"])
        if torch:
            best_torch = max(torch, key=lambda r: r["clips_per_s"])
            goal = TARGETS["fastest_amx"] if amx else TARGETS["fastest"]
            value = fastest["clips_per_s"] / best_torch["clips_per_s"]
            targets.append({"where": where, "what": "fastest keras / fastest torch",
                            "modes": f"{fastest['mode']} vs {best_torch['mode']}", "value": value, "goal": goal,
                            "unit": "x", "pass": value >= goal})
        if bf16_peak:
            value = fastest["gflops"] / bf16_peak
            targets.append({"where": where, "what": "fastest keras / bf16 peak",
                            "modes": f"{fastest['mode']}; {fastest['fraction_of_best_peak']:.0%} of the best peak",
                            "value": value, "goal": TARGETS["bf16_peak_fraction"], "unit": "%",
                            "pass": value >= TARGETS["bf16_peak_fraction"]})
        keras32 = [r for r in keras if r["precision"] == "float32"]
        torch32 = [r for r in torch if r["precision"] == "float32"]
        if keras32 and torch32:
            k, t = max(keras32, key=lambda r: r["clips_per_s"]), max(torch32, key=lambda r: r["clips_per_s"])
            value = k["clips_per_s"] / t["clips_per_s"]
            targets.append({"where": where, "what": "best keras fp32 / best torch fp32",
                            "modes": f"{k['mode']} vs {t['mode']}", "value": value, "goal": TARGETS["float32"],
                            "unit": "x", "pass": value >= TARGETS["float32"]})
    for target in targets:  # the targets apply to R(2+1)D-18; the others are reported
        target["applies"] = target["where"].startswith(TARGET_MODEL)
    train = {row["side"]: row for row in result["train"]}
    if "torch" in train:
        row = train["keras"]
        targets.append({"where": f"{row['model']} train {row['frames']}x{row['size']}x{row['size']} "
                                 f"batch {row['batch']}", "what": "keras / torch training step", "modes": "",
                        "value": row["ratio_vs_torch"], "goal": TARGETS["train"], "unit": "x",
                        "pass": row["ratio_vs_torch"] >= TARGETS["train"], "applies": True})


# ------------------------------------------------------------------ the report

def _share(value):
    return "?" if value is None else f"{value:.0%}"


def _fmt_value(value, unit):
    return f"{100 * value:.0f}%" if unit == "%" else f"{value:.2f}x"


def format_table(result):
    from keras_r21d.machine import ISA_FLAGS

    machine, peak = result["machine"], result["peak"]
    isa = machine["isa"]
    flags = " ".join(f for f in ISA_FLAGS if isa[f]) or "none of " + " ".join(ISA_FLAGS)
    onednn = {True: "on", False: "OFF (slow 3D convolutions; see keras_r21d.machine)", None: "n/a"}
    where = ", ".join(f"{k} {machine[k]}" for k in ("family", "model") if machine.get(k))
    lines = [
        f"Machine: {machine['cpu']} ({machine.get('vendor', '?')}{', ' + where if where else ''}), "
        f"{machine['cores']} cores; ISA: {flags}; AMX: {'yes' if isa['amx'] else 'no'}; "
        f"bfloat16 arithmetic: {'yes' if machine.get('bfloat16') else 'no'}.",
        f"TensorFlow oneDNN kernels (keras side): {onednn[machine.get('onednn')]}"
        + ("" if machine.get("tf_onednn_default") else "; TensorFlow's own default on this CPU: off") + ".",
        "Libraries: " + "; ".join(f"{side}: {lib}" for side, lib in result.get("libraries", {}).items()) + ".",
        "Matmul peak, GFLOP/s (square " + "/".join(map(str, peak["sizes"])) + f", best of {peak['runs']}): "
        + "; ".join(f"{lib} " + ", ".join(f"{d} {g:.0f}" for d, g in gf.items())
                    for lib, gf in peak["measured_gflops"].items()) + ".",
        "Peak used: " + ", ".join(f"{d} {peak[d]['gflops']:.0f} ({peak[d]['library']})"
                                  for d in ("float32", "bfloat16") if d in peak) + ".",
        "",
    ]
    s = result["settings"]
    lines.append(f"Inference, {s['frames']}x{s['size']}x{s['size']} clips; best of {s['rounds']} alternating "
                 "round(s) (a round: the mean over back-to-back batches); % of the peak of the mode's "
                 "precision; RSS: the side's process peak so far; |dlogit|: max difference from torch fp32 "
                 "on a shared clip; other: CPU share of other processes in that round (0% on a quiet "
                 "machine).")
    header = (f"{'model':<12} {'batch':>5} {'side':<5} {'mode':<31} {'clips/s':>8} {'ms/batch':>9} "
              f"{'GFLOP/s':>8} {'%peak':>6} {'RSS MB':>7} {'keras/torch':>11}  {'|dlogit|':>8} {'other':>5}")
    lines += [header, "-" * len(header)]
    previous = None
    for row in result["inference"]:
        key = (row["model"], row["batch"])
        if previous is not None and key != previous:
            lines.append("")
        previous = key
        ratio = f"{row['ratio_vs_torch']:.2f}x" if row["ratio_vs_torch"] is not None else "-"
        diff = "ref" if row["max_abs_logit_diff"] is None else f"{row['max_abs_logit_diff']:.1e}"
        lines.append(
            f"{row['model']:<12} {row['batch']:>5} {row['side']:<5} {row['mode']:<31} {row['clips_per_s']:>8.2f} "
            f"{row['ms_per_batch']:>9.1f} {row['gflops']:>8.1f} {100 * row['fraction_of_peak']:>5.0f}% "
            f"{row['rss_peak_mb']:>7.0f} {ratio:>11}  {diff:>8} {_share(row['other_cpu']):>5}")
    macs = {r["model"]: r["macs_per_clip"] for r in result["inference"]}
    lines.append("GMAC per clip: " + ", ".join(f"{m} {v / 1e9:.2f}" for m, v in macs.items())
                 + " (1 MAC = 2 FLOPs).")
    if result["train"]:
        row = result["train"][0]
        lines += ["", (f"Training step, {row['model']} {row['frames']}x{row['size']}x{row['size']} batch "
                       f"{row['batch']}, SGD momentum 0.9, float32, best of {s['rounds']} round(s):")]
        for row in result["train"]:
            ratio = f"{row['ratio_vs_torch']:.2f}x" if row.get("ratio_vs_torch") is not None else "-"
            lines.append(f"  {row['side']:<5} {row['clips_per_s']:>7.2f} clips/s {row['ms_per_step']:>8.0f} ms/step "
                         f"~{row['gflops']:>5.0f} GFLOP/s ({row['fraction_of_peak']:.0%} of fp32 peak, 3x forward) "
                         f"RSS {row['rss_peak_mb']:>6.0f} MB  keras/torch {ratio:>5}  other {_share(row['other_cpu'])}")
    if result["targets"]:
        lines += ["", f"Targets for this CPU kind (they apply to {TARGET_MODEL}, 'info' rows are reported only):"]
        width = max(len(t["where"]) for t in result["targets"])
        for t in result["targets"]:
            goal = f">= {_fmt_value(t['goal'], t['unit'])}"
            status = ("PASS" if t["pass"] else "FAIL") if t["applies"] else "info"
            lines.append(f"  {status}  {t['where']:<{width}}  {t['what']:<33} "
                         f"{_fmt_value(t['value'], t['unit']):>6} {goal:<9} {t['modes']}".rstrip())
    for note in result["notes"]:
        lines.append(f"Note: {note}")
    lines.append(f"Total wall time: {result['wall_s']:.0f} s.")
    return "\n".join(lines)


def parse_args(argv=None):
    import argparse

    from keras_r21d.cli import POSITIVE_INT

    parser = argparse.ArgumentParser(
        prog="python tools/bench.py",
        description="CPU speed of the networks against torchvision's, as a fraction of the machine's peak")
    parser.add_argument("--models", nargs="+", default=None,
                        help="networks to time: the first at every batch size and in the training step, "
                             "the others at the first batch size (default: r2plus1d_18 r3d_18 mc3_18)")
    parser.add_argument("--batch-sizes", type=POSITIVE_INT, nargs="+", default=None, help="default: 1 8")
    parser.add_argument("--frames", type=POSITIVE_INT, default=None, help="clip length T (default 16)")
    parser.add_argument("--size", type=POSITIVE_INT, default=None, help="crop size H = W (default 112)")
    parser.add_argument("--rounds", type=POSITIVE_INT, default=None,
                        help="alternating keras/torch rounds; the best round is reported (default 3)")
    parser.add_argument("--modes", nargs="+", default=None, help="only these modes (default: all)")
    parser.add_argument("--no-torch", action="store_true", help="time the Keras side only")
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test, not a measurement)")
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


def main(argv=None):
    """Runs the benchmark; prints the table (and writes --json)."""
    import pathlib

    args = parse_args(argv)
    try:
        settings = resolve_settings(models=args.models, batch_sizes=args.batch_sizes, frames=args.frames,
                                    size=args.size, rounds=args.rounds, modes=args.modes,
                                    torch=not args.no_torch, train=not args.no_train, quick=args.quick)
    except ValueError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 2
    result = run_benchmark(settings)
    print(format_table(result), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker" and sys.argv[2] in ("keras", "torch"):
        sys.exit(_serve(sys.argv[2]))
    sys.exit(main())
