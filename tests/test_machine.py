"""TensorFlow's oneDNN kernels on by default, the user's setting respected, and a CLI
without TensorFlow's start-up noise. Each check runs in a fresh Python process, since
TensorFlow reads the setting once, at its import."""

import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys

import pytest

from keras_r21d.machine import TF_ONEDNN_DEFAULT_FLAGS, cpu_flags, cpu_kind, describe_cpu

X86_LINUX = sys.platform.startswith("linux") and platform.machine() == "x86_64"
REPORT = """
import json, os, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    {imports}
from tensorflow.python.util import _pywrap_util_port  # TensorFlow's own answer
print(json.dumps({{"onednn": bool(_pywrap_util_port.IsMklEnabled()),
                  "variable": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                  "warnings": [str(w.message) for w in caught if "oneDNN" in str(w.message)]}}))
"""


def _run(imports, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
    done = subprocess.run([sys.executable, "-c", REPORT.format(imports=imports)], env={**base, **env},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not X86_LINUX, reason="oneDNN is turned on by default on x86 Linux only")
def test_importing_keras_r21d_first_turns_onednn_on():
    result = _run("import keras_r21d")
    assert result == {"onednn": True, "variable": "1", "warnings": []}


def test_an_explicit_setting_is_respected():
    assert _run("import keras_r21d", TF_ENABLE_ONEDNN_OPTS="0")["onednn"] is False
    assert _run("import keras_r21d", TF_ENABLE_ONEDNN_OPTS="false")["variable"] == "false"


@pytest.mark.skipif(not X86_LINUX, reason="TensorFlow's own default is defined on x86 Linux")
def test_tensorflow_imported_first_keeps_its_default_and_warns_only_where_slow():
    result = _run("import tensorflow\n    import keras_r21d")
    # TensorFlow's own default on this CPU is the reference for our reading of the flags.
    assert result["onednn"] == cpu_kind()["tf_onednn_default"]
    assert result["variable"] is None
    if result["onednn"]:
        assert result["warnings"] == []
    else:
        assert len(result["warnings"]) == 1 and "TF_ENABLE_ONEDNN_OPTS=1" in result["warnings"][0]


def test_cpu_kind_reads_cpuinfo(tmp_path):
    # A Zen 3 block as /proc/cpuinfo writes it, then a second processor that must be ignored.
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
                    "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma bmi2\n\n"
                    "processor\t: 1\nflags\t\t: avx512f avx512_bf16 amx_bf16\n")
    kind = cpu_kind(info)
    assert (kind["vendor"], kind["family"], kind["model"], kind["name"]) == ("AuthenticAMD", "25", "1", "AMD EPYC 7B13")
    assert [f for f, present in kind["isa"].items() if present] == ["avx2", "fma"]
    assert kind["amx"] is False and kind["bfloat16"] is False and kind["tf_onednn_default"] is False
    assert describe_cpu(kind) == "AMD EPYC 7B13 (AuthenticAMD family 25 model 1); avx2 fma"
    info.write_text("vendor_id\t: GenuineIntel\nflags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16\n")
    kind = cpu_kind(info)
    assert kind["amx"] and kind["bfloat16"] and kind["tf_onednn_default"]


@pytest.mark.skipif(shutil.which("lscpu") is None, reason="lscpu is not installed")
def test_cpu_flags_match_lscpu():
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, env={"LC_ALL": "C"}).stdout
    flags = next(line.split(":", 1)[1].split() for line in out.splitlines() if line.startswith("Flags:"))
    assert cpu_flags() == set(flags)
    assert cpu_kind()["tf_onednn_default"] == any(f in flags for f in TF_ONEDNN_DEFAULT_FLAGS)


def test_the_command_line_hides_tensorflow_start_up_noise():
    script = pathlib.Path(sys.executable).with_name("keras-r21d")
    if not script.is_file():
        pytest.skip("the keras-r21d console script is not installed beside this Python")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
    done = subprocess.run([str(script), "models", "r2d_18", "--json"], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)[0]["name"] == "r2d_18"
    assert done.stderr.strip() == "", done.stderr[-3000:]
    # The same import in a plain Python process does print TensorFlow's start-up lines:
    # the test above would fail without the filter.
    plain = subprocess.run([sys.executable, "-c", "import keras_r21d"], env=env, capture_output=True, text=True,
                           timeout=300, check=False)
    assert "absl::InitializeLog" in plain.stderr or "cpu_feature_guard" in plain.stderr
