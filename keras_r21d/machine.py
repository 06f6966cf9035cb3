"""The CPU this runs on, and TensorFlow's fast (oneDNN) CPU kernels turned on by default.

TensorFlow 2.21 turns its oneDNN kernels on by default only on CPUs with AVX512_VNNI,
AVX512_BF16, AVX_VNNI or AMX. On every other x86 CPU (AVX2-only ones: AMD Zen 1-3, Intel
before Ice Lake, many laptops and cloud VMs) it falls back to Eigen, whose Conv3D
gradients are pathologically slow: one training step of the demo's R2D-18 took 4.4 s with
Eigen and 0.03 s with oneDNN on an AMD EPYC Zen 3 (measured; see the README). The choice
is read once, when TensorFlow is imported, from `TF_ENABLE_ONEDNN_OPTS`; so importing
`keras_r21d` sets it to 1 first, unless the user has set it (their setting always wins).

This module imports neither TensorFlow nor Keras: it must run before them.
"""

import contextlib
import os
import platform
import re
import sys
import tempfile
import warnings

# The CPU flags with which TensorFlow turns oneDNN on by itself (tensorflow/core/util/port.cc).
TF_ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
# The flags that matter to these kernels, reported by `cpu_kind` and the benchmark.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
CLI_NAME = "keras-r21d"
QUIET_VARIABLE = "KERAS_R21D_QUIET_TENSORFLOW"


def _cpuinfo_fields(path="/proc/cpuinfo"):
    """The first processor's `key: value` lines of /proc/cpuinfo (empty off Linux)."""
    fields = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor's block
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags (x86 `flags` or Arm `Features`), as a set."""
    fields = _cpuinfo_fields(path)
    return set((fields.get("flags") or fields.get("Features") or "").split())


def cpu_name(path="/proc/cpuinfo"):
    return _cpuinfo_fields(path).get("model name") or platform.processor() or platform.machine()


def cpu_kind(path="/proc/cpuinfo"):
    """What the fast paths depend on: vendor, model name, family/model, ISA flags.

    `bfloat16` says whether the CPU has bfloat16 arithmetic (AVX512_BF16 or AMX);
    without it bfloat16 is emulated, far slower than float32. `tf_onednn_default`
    says whether TensorFlow would turn oneDNN on by itself on this CPU.
    """
    fields = _cpuinfo_fields(path)
    flags = cpu_flags(path)
    isa = {flag: flag in flags for flag in ISA_FLAGS}
    return {
        "vendor": fields.get("vendor_id", platform.machine()),
        "name": cpu_name(path),
        "family": fields.get("cpu family"),
        "model": fields.get("model"),
        "isa": isa,
        "amx": any(flag.startswith("amx") for flag in flags),
        "bfloat16": isa["avx512_bf16"] or isa["amx_bf16"],
        "tf_onednn_default": any(flag in flags for flag in TF_ONEDNN_DEFAULT_FLAGS),
    }


def describe_cpu(kind=None):
    """One line: `AMD EPYC (AuthenticAMD family 25 model 1); avx2 fma`."""
    kind = kind or cpu_kind()
    flags = " ".join(flag for flag, present in kind["isa"].items() if present) or "none of " + " ".join(ISA_FLAGS)
    where = " ".join(x for x in (kind["vendor"], kind["family"] and f"family {kind['family']}",
                                 kind["model"] and f"model {kind['model']}") if x)
    return f"{kind['name']} ({where}); {flags}"


def _x86_linux():
    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


def enable_onednn():
    """Turns TensorFlow's oneDNN kernels on for the next TensorFlow import.

    Does nothing when the user set `TF_ENABLE_ONEDNN_OPTS` (any value), off x86 Linux
    (the only platform measured), or when TensorFlow is already imported: then it can
    no longer change, and a warning says once how to fix it if oneDNN is off on a CPU
    where that is slow. Returns whether it set the variable.
    """
    if ONEDNN_VARIABLE in os.environ or not _x86_linux():
        return False
    if "tensorflow" in sys.modules:
        _warn_if_onednn_off()
        return False
    os.environ[ONEDNN_VARIABLE] = "1"
    return True


# TensorFlow's start-up messages (CPU guard, oneDNN banner, CUDA probing on a machine
# without a GPU): printed before absl's logging is initialised, so TF_CPP_MIN_LOG_LEVEL
# does not hide them (measured on TF 2.21).
TF_STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|cpu_feature_guard|To enable the following instructions"
    r"|oneDNN custom operations are|cudart_stub|cuda_(platform|dnn|fft|blas)|cuInit|Unable to register cu"
    r"|computation_placer|TF-TRT Warning")


@contextlib.contextmanager
def _stderr_filtered(noise):
    """Captures what C code writes to file descriptor 2; replays the lines not matching `noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines() if not noise.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def quiet_tensorflow_in_cli():
    """In the `keras-r21d` command, TensorFlow's start-up messages stay hidden.

    `TF_CPP_MIN_LOG_LEVEL` becomes 3 unless the user set it (hides C++ errors such as the
    failed CUDA probe and graph-optimizer chatter; real errors still raise in Python), and
    at level 3 TensorFlow is imported with its start-up noise filtered out of stderr.
    Library users keep TensorFlow's defaults. Worker processes of the CLI ask for the same
    with `KERAS_R21D_QUIET_TENSORFLOW=1`.
    """
    argv = getattr(sys, "argv", None) or [""]
    if os.path.basename(argv[0]) != CLI_NAME and os.environ.get(QUIET_VARIABLE) != "1":
        return
    if os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3") != "3" or "tensorflow" in sys.modules:
        return
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        with _stderr_filtered(TF_STARTUP_NOISE):
            try:
                import tensorflow  # noqa: F401
            except ImportError:
                pass  # reported where Keras needs it


def onednn_enabled():
    """Whether the imported TensorFlow runs its oneDNN kernels (None: TF not imported or no answer)."""
    if "tensorflow" not in sys.modules:
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


_warned = False


def _warn_if_onednn_off():
    global _warned
    if _warned or onednn_enabled() is not False or cpu_kind()["tf_onednn_default"]:
        return
    _warned = True
    warnings.warn(
        "TensorFlow was imported before keras_r21d, with its oneDNN kernels off on this CPU "
        f"({cpu_name()}, no AVX512_VNNI/BF16 or AMX): 3D convolutions, and above all their training, "
        "run many times slower. Import keras_r21d before TensorFlow/Keras, or set "
        f"{ONEDNN_VARIABLE}=1 in the environment before starting Python.",
        RuntimeWarning, stacklevel=3)
