"""The speed-up trials behind the fast path: one table, each trial in its own process.

    python tools/bench_trials.py [--batch 1] [--frames 16] [--size 112] [--rounds 3]
                                 [--trials NAME ...] [--json OUT]

R(2+1)D-18 with torchvision's widths, random weights with random batch-norm
statistics (the same weights in every trial), one random clip batch. Each trial
reports clips/s (best of `--rounds` rounds of 2 calls, after a warm-up call), the
largest difference of its softmax from the plain float32 Keras model's and whether
the top-1 classes agree (on the first clip of each video of `--videos`, or on the
random batch).
Trials: the plain model and `optimize_for_inference` (batch norm folded) on the
TensorFlow backend, with XLA, in mixed bfloat16, with the 2D lowering; the
exported TFLite graph (XNNPACK) in float32 and int8; ONNX Runtime; OpenVINO (pip install
openvino) on the exported ONNX graph; the JAX and
PyTorch backends. torchvision itself is measured by `python tools/bench.py`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TRIALS = {
    "tf float32 (get_model)": ("tensorflow", "plain", {}),
    "tf float32 optimize_for_inference": ("tensorflow", "optimized", {}),
    "tf float32 optimized, 2D/1D lowering": ("tensorflow", "optimized", {"conv2d_only": True}),
    "tf float32 XLA jit_compile (get_model)": ("tensorflow", "plain", {"jit_compile": True}),
    "tf float32 XLA jit_compile, optimized": ("tensorflow", "optimized", {"jit_compile": True}),
    "tf mixed_bfloat16 (get_model)": ("tensorflow", "plain", {"bfloat16": True}),
    "tf bfloat16 optimize_for_inference": ("tensorflow", "optimized", {"precision": "bfloat16"}),
    "tflite float32 XNNPACK (exported)": ("tensorflow", "tflite", {}),
    "tflite int8 XNNPACK (exported, calibrated)": ("tensorflow", "tflite", {"int8": True}),
    "onnxruntime float32 (exported)": ("tensorflow", "onnx", {}),
    "openvino float32 (exported ONNX)": ("tensorflow", "openvino", {}),
    "jax float32 (get_model)": ("jax", "plain", {}),
    "jax float32 optimize_for_inference": ("jax", "optimized", {}),
    "torch backend float32 (get_model)": ("torch", "plain", {}),
    "torch backend float32 optimize_for_inference": ("torch", "optimized", {}),
}


def _timed(call, rounds):
    start = time.perf_counter()
    call()  # warm-up: tracing, compilation, allocation
    if time.perf_counter() - start > 30:  # a hopeless trial: one timed call is enough
        rounds, calls = 1, 1
    else:
        calls = 2
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def worker(workdir, kind, options, rounds):
    """Runs one trial in this process (its Keras backend set by the parent)."""
    import numpy as np

    if os.environ.get("KERAS_BACKEND") == "torch":
        sys.modules.setdefault("triton", None)
    import keras

    import keras_r21d

    x = np.load(os.path.join(workdir, "input.npy"))
    check = np.load(os.path.join(workdir, "check.npy"))
    if options.get("bfloat16"):
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = keras_r21d.get_model("r2plus1d_18", midplanes="per_block", classifier_activation=None,
                                 input_shape=(None,) + x.shape[2:])
    model.load_weights(os.path.join(workdir, "model.weights.h5"))
    keras.mixed_precision.set_global_policy("float32")
    if kind == "optimized":
        model = keras_r21d.optimize_for_inference(
            model, precision=options.get("precision", "float32"), conv2d_only=options.get("conv2d_only", False))
    if kind in ("plain", "optimized") and options.get("jit_compile"):
        import tensorflow as tf

        compiled = tf.function(lambda clips: model(clips, training=False), jit_compile=True)
        infer = lambda clips: keras.ops.convert_to_numpy(compiled(clips))  # noqa: E731
    elif kind in ("plain", "optimized"):
        infer = lambda clips: np.asarray(model.predict_on_batch(clips), np.float32)  # noqa: E731
    else:
        infer = _exported(model, x, kind, options, workdir)
    seconds = _timed(lambda: infer(x), rounds)
    return {"clips_per_s": len(x) / seconds, "ms_per_batch": seconds * 1e3, "logits": infer(check).tolist()}


def _exported(model, x, kind, options, workdir):
    """`infer(clips)` of the exported artifact, run by its own runtime."""
    import numpy as np

    from keras_r21d.export import export_model, load_exported

    if kind == "onnx":
        return load_exported(export_model(model, os.path.join(workdir, "model.onnx"), "onnx", frames=x.shape[1]))
    if kind == "openvino":
        import openvino

        path = export_model(model, os.path.join(workdir, "model.onnx"), "onnx", frames=x.shape[1])
        # float32 asked for explicitly: on CPUs with bfloat16 OpenVINO would otherwise compute in bfloat16.
        compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return lambda clips: np.asarray(compiled(clips)[0], np.float32)
    # TFLite graphs have a fixed shape: one clip per call, as on a phone.
    calibration = np.load(os.path.join(workdir, "calibration.npy")) if options.get("int8") else None
    path = export_model(model, os.path.join(workdir, "model.tflite"), "tflite", frames=x.shape[1],
                        int8_calibration=calibration)
    run = load_exported(path)
    return lambda clips: np.concatenate([run(clip[None]) for clip in clips])


def _real_clips(args, start=0):
    import pathlib

    import numpy as np

    from keras_r21d.data.preprocessing import preprocess_input
    from keras_r21d.data.splits import VIDEO_EXTENSIONS
    from keras_r21d.data.video import read_clip

    files = sorted(p for p in pathlib.Path(args.videos).iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise SystemExit(f"No video in {args.videos}.")
    return np.concatenate([preprocess_input(read_clip(str(p), start, args.frames)[None], crop=args.size)
                           for p in files]).astype("float32")


def layouts(rounds):
    """Channels-last against channels-first 3D convolutions in TensorFlow, on the main
    convolution shapes of R(2+1)D-18 (the whole network is channels-last only)."""
    import tensorflow as tf

    print("| conv (C_in, T, H=W, C_out, kernel)        | NDHWC ms | NCDHW ms |")
    print("|-------------------------------------------|----------|----------|")
    for c, t, h, co, kernel in [(64, 16, 56, 144, (1, 3, 3)), (144, 16, 56, 64, (3, 1, 1)),
                                (128, 8, 28, 288, (1, 3, 3)), (288, 8, 28, 128, (3, 1, 1))]:
        last = tf.random.normal((1, t, h, h, c))
        first = tf.transpose(last, (0, 4, 1, 2, 3))
        w = tf.random.normal(kernel + (c, co))
        times = []
        for x, fmt in ((last, "NDHWC"), (first, "NCDHW")):
            conv = tf.function(lambda x=x, fmt=fmt: tf.nn.conv3d(x, w, [1] * 5, "SAME", data_format=fmt))
            times.append(_timed(lambda conv=conv: conv().numpy(), rounds) * 1e3)
        print(f"| {str((c, t, h, co, kernel)):<41} | {times[0]:8.1f} | {times[1]:8.1f} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", nargs="+", choices=list(TRIALS), metavar="TRIAL", help="default: all")
    parser.add_argument("--videos", help="folder of real videos: the softmax differences are measured on "
                                         "the first clip of each (default: on the random timing batch)")
    parser.add_argument("--layouts", action="store_true",
                        help="only time channels-last against channels-first convolutions")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        workdir, name, out = args.worker
        kind, options = TRIALS[name][1:]
        with open(out, "w") as f:
            json.dump(worker(workdir, kind, options, args.rounds), f)
        return 0
    if args.layouts:
        layouts(args.rounds)
        return 0

    import numpy as np

    from keras_r21d.evaluation import to_probabilities
    from keras_r21d.machine import cpu_name

    workdir = tempfile.mkdtemp(prefix="bench_trials_")
    x = np.random.default_rng(0).normal(size=(args.batch, args.frames, args.size, args.size, 3))
    np.save(os.path.join(workdir, "input.npy"), x.astype("float32"))
    np.save(os.path.join(workdir, "check.npy"), _real_clips(args) if args.videos else x.astype("float32"))
    # int8 ranges come from other clips of the same videos (the second clip of each)
    np.save(os.path.join(workdir, "calibration.npy"),
            _real_clips(args, start=args.frames) if args.videos else x.astype("float32"))
    # Random weights with random BN statistics and torch.nn.Linear's default classifier init
    # (uniform, bound 1/sqrt(512)), so the softmax is far from uniform and |dp| means something.
    setup = ("import sys, numpy as np, keras, keras_r21d; sys.path.insert(0, 'tests'); keras.utils.set_random_seed(0); "
             "from tests.conftest import randomize_batchnorm; "
             "m = keras_r21d.get_model('r2plus1d_18', midplanes='per_block', classifier_activation=None); "
             "randomize_batchnorm(m); fc = m.get_layer('fc'); b = 512 ** -0.5; r = np.random.default_rng(1); "
             "fc.set_weights([r.uniform(-b, b, w.shape).astype('float32') for w in fc.get_weights()]); "
             "m.save_weights(sys.argv[1])")
    subprocess.run([sys.executable, "-c", setup, os.path.join(workdir, "model.weights.h5")], check=True,
                   cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    print(f"{cpu_name()}, {os.cpu_count()} cores. R(2+1)D-18 (torchvision widths), batch {args.batch}, "
          f"{args.frames}x{args.size}x{args.size}, best of {args.rounds} rounds.", flush=True)
    print(f"| {'trial':<46} | {'clips/s':>7} | {'ms/batch':>8} | {'vs first':>8} | {'max |dp|':>8} | top-1 |")
    print(f"|{'-' * 48}|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 10}|-------|", flush=True)
    results, reference = {}, None
    for name in args.trials or TRIALS:
        backend = TRIALS[name][0]
        out = os.path.join(workdir, "result.json")
        run = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--rounds", str(args.rounds), "--worker", workdir, name, out],
            env=dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES=""),
            capture_output=True, text=True, check=False)
        if run.returncode != 0:
            results[name] = {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "failed"}
            print(f"| {name:<46} | failed: {results[name]['error'][:70]}", flush=True)
            continue
        with open(out) as f:
            result = json.load(f)
        probs = to_probabilities(np.array(result.pop("logits")))
        if reference is None:
            reference = probs
            print(f"| (reference softmax: top-1 probability {probs.max(-1).min():.2f} to {probs.max(-1).max():.2f}) |")
        result["max_prob_diff"] = float(np.abs(probs - reference).max())
        result["top1_equal"] = bool((probs.argmax(-1) == reference.argmax(-1)).all())
        first = next(iter(results.values()), result)
        results[name] = result
        print(f"| {name:<46} | {result['clips_per_s']:7.2f} | {result['ms_per_batch']:8.0f} | "
              f"{result['clips_per_s'] / first['clips_per_s']:7.2f}x | {result['max_prob_diff']:8.1e} | "
              f"{'same' if result['top1_equal'] else 'DIFF':>5} |",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "batch": args.batch, "frames": args.frames, "size": args.size,
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
