"""R(2+1)D-18 on one GPU: keras-r21d on the Keras JAX backend (XLA) against torchvision.

    python tools/bench_gpu.py [--batch 32] [--frames 16] [--size 112] [--seconds 4] [--json out.json]

Both sides get the same network (torchvision's widths and weights, seeded, with random
batch-norm statistics as a trained network has; the Keras side loads torchvision's
state_dict through the converter), the same input and the same batch. Each side runs in
its own process, one after the other. Timed: inference at batch 1 and at `--batch`
(`--frames` x `--size`^2 clips), and an SGD training step (momentum 0.9, cross-entropy)
at `--batch`. Each call is synchronised with the device; the figure is the median call.

Modes, float32 and mixed precision on each side:
- torchvision: float32 (default layout and channels_last_3d) and AMP
  (`torch.autocast("cuda", torch.bfloat16)`, channels_last_3d). cuDNN may use TF32 in
  float32 convolutions (PyTorch's default).
- Keras JAX: float32 and the "mixed_bfloat16" policy, each as `jax.jit` over
  `model.stateless_call` (inference) and `model.train_on_batch` with `jit_compile=True`
  (training, Keras's own XLA train step); plus float32 `predict_on_batch`, the call a
  Keras user makes. XLA may use TF32 in float32 convolutions (JAX's default precision).

The float32 logits of the two sides are compared on the same clips.
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def clips(batch, frames, size, seed=0):
    return np.random.default_rng(seed + batch).standard_normal((batch, frames, size, size, 3), np.float32)


def labels(batch, classes=400, seed=0):
    return np.random.default_rng(seed + 1000 + batch).integers(0, classes, batch)


def median_call_s(sync, seconds, call, *args, warmup=3, min_calls=5):
    """Median seconds of `call(*args)`, each call waited for with `sync(result)`."""
    for _ in range(warmup):
        sync(call(*args))
    times, begin = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - begin < seconds:
        start = time.perf_counter()
        sync(call(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_infer(net, x, amp):
    import torch

    with torch.inference_mode(), torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
        return net(x)


def torch_step(net, optimizer, x, y, amp):
    import torch

    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
        loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    optimizer.step()


def torch_side(args):
    import torch
    from bench import seeded_torchvision  # tools/ is the script's folder

    model = seeded_torchvision("r2plus1d_18", 0, args.checkpoint)
    # CPU only to try the script out where no GPU is (the figures are meant for a GPU)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)

    def sync(_):
        if device.type == "cuda":
            torch.cuda.synchronize()

    def as_input(batch, channels_last):
        x = torch.from_numpy(clips(batch, args.frames, args.size).transpose(0, 4, 1, 2, 3).copy()).to(device)
        return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x

    modes = {"float32": ("float32", False), "float32 channels_last_3d": ("float32", True),
             "AMP bf16 channels_last_3d": ("bfloat16", True)}
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "versions": {"torch": torch.__version__},
              "inference": {}, "training": {}}
    for mode, (precision, channels_last) in modes.items():
        net = model.to(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
        amp = precision == "bfloat16"
        for batch in sorted({1, args.batch}):
            x = as_input(batch, channels_last)
            result["inference"].setdefault(str(batch), {})[mode] = median_call_s(
                sync, args.seconds, torch_infer, net.eval(), x, amp)
        if mode == "float32":
            with torch.inference_mode():
                result["logits"] = net.eval()(as_input(2, False)).float().cpu().numpy().tolist()
        if mode == "float32 channels_last_3d":
            continue  # training: one float32 and one AMP mode
        net.train()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        x, y = as_input(args.batch, channels_last), torch.from_numpy(labels(args.batch)).to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result["training"][mode] = median_call_s(sync, args.seconds, torch_step, net, optimizer, x, y, amp)
        if device.type == "cuda":
            result["training"][mode + " peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def stateless_logits(model, trainable, non_trainable, x):
    return model.stateless_call(trainable, non_trainable, x, training=False)[0]


def keras_side(args):
    os.environ["KERAS_BACKEND"] = "jax"
    sys.path.insert(0, ROOT)
    import jax
    import keras

    from keras_r21d.applications import get_model
    from keras_r21d.presets.checkpoints import read_checkpoint
    from keras_r21d.presets.convert import assign_weights, detect_layout, infer_architecture

    tensors = read_checkpoint(args.checkpoint)
    layout = detect_layout(tensors, "torch")
    config = infer_architecture(tensors, layout)  # torchvision's (2+1)D widths
    name = config.pop("architecture")

    def network(policy, frames):
        keras.config.set_dtype_policy(policy)
        model = get_model(name, input_shape=(frames, args.size, args.size, 3), classifier_activation=None, **config)
        assign_weights(model, tensors, layout)
        return model

    def sync(out):
        jax.block_until_ready(out)

    def synced(out):  # Keras's own calls return NumPy
        pass

    result = {"device": str(jax.devices()[0].device_kind),
              "versions": {"jax": jax.__version__, "keras": keras.__version__}, "inference": {}, "training": {}}
    for policy, mode in (("float32", "float32"), ("mixed_bfloat16", "mixed_bfloat16")):
        model = network(policy, args.frames)
        infer = jax.jit(functools.partial(stateless_logits, model))
        for batch in sorted({1, args.batch}):
            x = jax.device_put(clips(batch, args.frames, args.size))
            # read afresh: Keras's own jitted calls donate the variables' buffers
            weights = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
            result["inference"].setdefault(str(batch), {})[mode + " jit(stateless_call)"] = median_call_s(
                sync, args.seconds, infer, *weights, x)
            if policy == "float32":
                result["inference"][str(batch)]["float32 predict_on_batch"] = median_call_s(
                    synced, args.seconds, model.predict_on_batch, x)
        if policy == "float32":
            weights = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
            result["logits"] = np.asarray(infer(*weights, jax.device_put(clips(2, args.frames, args.size))),
                                          np.float32).tolist()
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
        x, y = jax.device_put(clips(args.batch, args.frames, args.size)), jax.device_put(labels(args.batch))
        result["training"][mode + " train_on_batch"] = median_call_s(
            synced, args.seconds, model.train_on_batch, x, y)
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats and policy == "float32":  # the process's peak: the first mode's only
            result["training"][mode + " train_on_batch peak GiB"] = stats["peak_bytes_in_use"] / 2**30
        keras.backend.clear_session()
    keras.config.set_dtype_policy("float32")
    return result


def best_s(result, task, batch, prefix):
    times = result[task] if task == "training" else result[task][str(batch)]
    return min(s for m, s in times.items() if m.startswith(prefix) and not m.endswith("GiB"))


def format_table(torch_result, keras_result, args):
    def rate(seconds, batch):
        return batch / seconds

    title = (f"GPU: {torch_result['device']}; R(2+1)D-18, torchvision widths, {args.frames}x{args.size}x{args.size}; "
             f"{torch_result['versions']} / {keras_result['versions']}")
    lines = [title, "",
             "| task | side | mode | clips/s |", "|---|---|---|---|"]
    for batch in sorted({1, args.batch}):
        for side, result in (("torchvision", torch_result), ("keras-r21d JAX", keras_result)):
            for mode, seconds in result["inference"][str(batch)].items():
                lines.append(f"| inference, batch {batch} | {side} | {mode} | {rate(seconds, batch):.1f} |")
    for side, result in (("torchvision", torch_result), ("keras-r21d JAX", keras_result)):
        for mode, seconds in result["training"].items():
            if not mode.endswith("GiB"):
                peak = result["training"].get(mode + " peak GiB")
                note = f" (peak {peak:.1f} GiB)" if peak else ""
                lines.append(f"| training step, batch {args.batch} | {side} | {mode}{note} | "
                             f"{rate(seconds, args.batch):.1f} |")
    lines.append("")
    for task, batches in (("inference", sorted({1, args.batch})), ("training", [args.batch])):
        for batch in batches:
            fp32 = best_s(torch_result, task, batch, "float32") / best_s(keras_result, task, batch, "float32")
            mixed = best_s(torch_result, task, batch, "AMP") / best_s(keras_result, task, batch, "mixed")
            lines.append(f"{task}, batch {batch}: keras-r21d's best / torchvision's best: float32 {fp32:.2f}x, "
                         f"mixed precision (bf16) {mixed:.2f}x")
    diff = np.abs(np.asarray(torch_result["logits"]) - np.asarray(keras_result["logits"])).max()
    lines.append(f"float32 logits, same weights and clips: max |keras - torch| = {diff:.2e}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per mode (after warm-up)")
    parser.add_argument("--json", help="write both sides' results here")
    parser.add_argument("--side", choices=("torch", "keras"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        result = (torch_side if args.side == "torch" else keras_side)(args)
        with open(args.out, "w") as f:
            json.dump(result, f)
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for side in ("torch", "keras"):  # torch writes the checkpoint the Keras side loads
            out = os.path.join(tmp, side + ".json")
            begin = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--side", side, "--checkpoint", os.path.join(tmp, "r21d.pth"),
                            "--out", out, "--batch", str(args.batch), "--frames", str(args.frames),
                            "--size", str(args.size), "--seconds", str(args.seconds)], check=True)
            with open(out) as f:
                results[side] = json.load(f)
            print(f"{side} side: {time.perf_counter() - begin:.0f} s", flush=True)
    print(format_table(results["torch"], results["keras"], args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
