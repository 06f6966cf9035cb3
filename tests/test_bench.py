"""`python tools/bench.py`: one quick run end to end, its JSON checked
against independent references (MACs from the layer shapes, /proc/cpuinfo, the
arithmetic of every derived column, Keras vs torchvision logits)."""

import contextlib
import importlib.util
import io
import json
import math

import pytest
from conftest import load_tool

bench = load_tool("bench")

HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="the torch side needs torch and torchvision")


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = bench.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    code, out, err = _run(["--quick", "--json", str(path)])
    assert code == 0, err
    return json.loads(path.read_text()), out


def _conv_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def torchvision_r2plus1d_18_macs(frames, size, classes=400):
    """MACs of torchvision's r2plus1d_18, written out from its layer definitions."""
    macs = 0

    def conv(shape, cin, cout, k, s, p):
        nonlocal macs
        out = tuple(_conv_out(n, *a) for n, a in zip(shape, zip(k, s, p)))
        macs += math.prod(out) * math.prod(k) * cin * cout
        return out

    # R2Plus1dStem: 1x7x7 conv 3->45 stride (1,2,2), then 3x1x1 conv 45->64.
    shape = conv((frames, size, size), 3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3))
    shape = conv(shape, 45, 64, (3, 1, 1), (1, 1, 1), (1, 0, 0))
    inplanes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            mid = (inplanes * planes * 27) // (inplanes * 9 + 3 * planes)  # both convs of the block
            start = shape
            x = conv(shape, inplanes, mid, (1, 3, 3), (1, s, s), (0, 1, 1))
            x = conv(x, mid, planes, (3, 1, 1), (s, 1, 1), (1, 0, 0))
            x = conv(x, planes, mid, (1, 3, 3), (1, 1, 1), (0, 1, 1))
            x = conv(x, mid, planes, (3, 1, 1), (1, 1, 1), (1, 0, 0))
            if s != 1 or inplanes != planes:
                conv(start, inplanes, planes, (1, 1, 1), (s, s, s), (0, 0, 0))
            shape, inplanes = x, planes
    return macs + 512 * classes


def test_reference_mac_count():
    # torchvision's published cost of r2plus1d_18 at 16x112x112: 40.52 G(MAC).
    assert torchvision_r2plus1d_18_macs(16, 112) == pytest.approx(40.52e9, rel=2e-3)


def test_flops_per_clip(quick):
    result, _ = quick
    s = result["settings"]
    expected = torchvision_r2plus1d_18_macs(s["frames"], s["size"]) if HAS_TORCH else None
    rows = [r for r in result["inference"] if r["model"] == "r2plus1d_18"]
    assert rows
    for row in rows:
        assert row["flops_per_clip"] == 2 * row["macs_per_clip"]
        if expected is not None:  # torchvision widths (per-block), as the converted weights have
            assert row["macs_per_clip"] == expected


def test_derived_columns(quick):
    result, _ = quick
    for row in result["inference"]:
        assert row["s_per_batch"] == min(row["round_s_per_batch"])
        assert row["ms_per_batch"] == pytest.approx(1e3 * row["s_per_batch"])
        assert row["clips_per_s"] == pytest.approx(row["batch"] / row["s_per_batch"])
        assert row["gflops"] == pytest.approx(row["flops_per_clip"] * row["clips_per_s"] / 1e9)
        peak = result["peak"][row["precision"]]["gflops"]
        assert row["fraction_of_peak"] == pytest.approx(row["gflops"] / peak)
        assert row["rss_peak_mb"] > 50
    dtypes = ("float32", "bfloat16") if result["machine"]["bfloat16"] else ("float32",)
    for dtype in dtypes:
        best = max(g[dtype] for g in result["peak"]["measured_gflops"].values() if dtype in g)
        assert result["peak"][dtype]["gflops"] == best > 0
    if not result["machine"]["bfloat16"]:  # emulated there: not timed, and said so
        assert "bfloat16" not in result["peak"]
        assert all(r["precision"] == "float32" for r in result["inference"])
        assert any("no bfloat16 instructions" in note for note in result["notes"])


def test_every_mode_timed_at_every_batch_size(quick):
    result, out = quick
    s = result["settings"]
    sides = {r["side"] for r in result["inference"]}
    assert sides == ({"keras", "torch"} if HAS_TORCH else {"keras"})
    for batch in s["batch_sizes"]:
        modes = {(r["side"], r["mode"]) for r in result["inference"] if r["batch"] == batch}
        assert ("keras", "float32") in modes
        if HAS_TORCH:
            expected = ["fp32", "fp32 channels_last_3d"]
            if result["machine"]["bfloat16"]:
                expected += ["bf16 autocast", "bf16 autocast channels_last_3d"]
            assert {("torch", m) for m in expected} <= modes
    for row in result["inference"]:  # and each is a line of the printed table
        assert any(line.split()[:3] == [row["model"], str(row["batch"]), row["side"]] and row["mode"] in line
                   for line in out.splitlines())
    assert "Total wall time" in out


def _cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return value.split()
    return None


def test_isa_flags(quick):
    result, out = quick
    flags = _cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags on this system")
    isa = result["machine"]["isa"]
    for flag in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"):
        assert isa[flag] == (flag in flags), flag
    assert isa["amx"] == any(f.startswith("amx") for f in flags)
    assert ("AMX: yes" in out) == isa["amx"]
    assert result["machine"]["bfloat16"] == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_onednn_state_of_the_keras_side(quick):
    result, out = quick
    from tensorflow.python.util import _pywrap_util_port  # this process imported keras_r21d first too

    assert result["machine"]["onednn"] == bool(_pywrap_util_port.IsMklEnabled())
    assert ("oneDNN kernels (keras side): on" in out) == result["machine"]["onednn"]


@needs_torch
def test_same_weights_same_logits(quick):
    result, _ = quick
    checks = {(c["model"], c["side"], c["mode"]): c for c in result["logit_check"]}
    float32 = checks["r2plus1d_18", "keras", "float32"]
    assert float32["reference"] == "torch fp32"
    assert float32["max_abs_diff"] < 1e-3
    if ("r2plus1d_18", "keras", "float32 optimized") in checks:
        assert checks["r2plus1d_18", "keras", "float32 optimized"]["max_abs_diff"] < 1e-3
    # The table's |dlogit| column is that number.
    row = next(r for r in result["inference"] if (r["side"], r["mode"]) == ("keras", "float32"))
    assert row["max_abs_logit_diff"] == float32["max_abs_diff"]


@needs_torch
def test_ratios_and_targets(quick):
    result, _ = quick
    rows = result["inference"]
    for row in rows:
        if row["side"] != "keras":
            assert row["ratio_vs_torch"] is None
            continue
        torch_rows = [r for r in rows
                      if r["side"] == "torch" and (r["model"], r["batch"]) == (row["model"], row["batch"])]
        same = [r for r in torch_rows if r["precision"] == row["precision"]] or torch_rows
        fastest = max(same, key=lambda r: r["clips_per_s"])
        assert row["compared_with"] == fastest["mode"]
        assert row["ratio_vs_torch"] == pytest.approx(row["clips_per_s"] / fastest["clips_per_s"])
    targets = result["targets"]
    assert targets
    for target in targets:
        assert target["pass"] == (target["value"] >= target["goal"])
    batch = result["settings"]["batch_sizes"][0]
    here = [r for r in rows if (r["model"], r["batch"]) == ("r2plus1d_18", batch)]
    fastest = next(t for t in targets
                   if t["where"] == f"r2plus1d_18 batch {batch}" and t["what"].startswith("fastest"))
    assert fastest["value"] == pytest.approx(max(r["clips_per_s"] for r in here if r["side"] == "keras")
                                             / max(r["clips_per_s"] for r in here if r["side"] == "torch"))
    assert fastest["goal"] == (1.5 if result["machine"]["isa"]["amx"] else 1.0)
    train = {r["side"]: r for r in result["train"]}
    for row in train.values():
        assert row["clips_per_s"] == pytest.approx(row["batch"] / row["s_per_step"])
        # a training step estimated at 3 forward passes of the training clip
        macs = torchvision_r2plus1d_18_macs(row["frames"], row["size"])
        assert row["flops_per_clip_estimate"] == pytest.approx(3 * 2 * macs, rel=1e-6)
        assert row["gflops"] == pytest.approx(row["flops_per_clip_estimate"] * row["clips_per_s"] / 1e9)
        assert row["fraction_of_peak"] == pytest.approx(row["gflops"] / result["peak"]["float32"]["gflops"])
    keras, torch = train["keras"], train["torch"]
    assert keras["ratio_vs_torch"] == pytest.approx(keras["clips_per_s"] / torch["clips_per_s"])
    assert any(t["what"] == "keras / torch training step" for t in targets)


def test_keras_only(tmp_path):
    path = tmp_path / "bench.json"
    code, out, err = _run(["--quick", "--no-torch", "--no-train", "--models", "mc3_18",
                           "--modes", "float32", "--json", str(path)])
    assert code == 0, err
    result = json.loads(path.read_text())
    assert {(r["side"], r["mode"]) for r in result["inference"]} == {("keras", "float32")}
    assert [r["batch"] for r in result["inference"]] == result["settings"]["batch_sizes"]
    assert all(r["ratio_vs_torch"] is None for r in result["inference"])
    assert result["train"] == []
    # Without torch only the fraction-of-bf16-peak goal is left (bfloat16 arithmetic without AMX).
    batches = result["settings"]["batch_sizes"]
    bf16_no_amx = result["machine"]["bfloat16"] and not result["machine"]["isa"]["amx"]
    expected = [f"mc3_18 batch {b}" for b in batches] if bf16_no_amx else []
    assert [t["where"] for t in result["targets"]] == expected
    assert all("torch" not in t["what"] and t["unit"] == "%" for t in result["targets"])
    assert not any(t["applies"] for t in result["targets"])  # the targets are R(2+1)D-18's only
    assert "mc3_18" in out


@pytest.mark.parametrize("argv, message", [
    (["--models", "r2plus1d_99"], "r2plus1d_18"),  # the choices are listed
    (["--modes", "int4"], "float32 optimized"),
])
def test_unknown_names(argv, message):
    code, _, err = _run(["--quick", *argv])
    assert code == 2
    assert "Unknown" in err and message in err
