"""The `keras-r21d` command line. Every command is a thin wrapper over the Python API."""

import argparse
import json
import sys
import time


def _models_table(args):
    from keras_r21d.complexity import count_macs, count_params
    from keras_r21d.models import display_name, get_model, list_models
    from keras_r21d.presets import pretrained_models

    names = list_models(args.pattern)
    kinetics = pretrained_models("kinetics400")
    if not names:
        raise SystemExit(f"No registered network matches {args.pattern!r}; see `keras-r21d models`.")
    shape = (args.frames, args.size, args.size, 3)
    rows = []
    if not args.json:
        print(f"Input {args.frames}x{args.size}x{args.size}x3, {args.classes} classes, "
              f"(2+1)D widths {args.midplanes}; MACs per clip (1 GMAC = 2 GFLOPs).")
        print(f"{'name':<13} {'network':<12} {'params':>12} {'GMAC':>8} {'T at conv5':>10}  "
              "Kinetics-400 weights")
    for name in names:
        model = get_model(name, input_shape=shape, classes=args.classes, midplanes=args.midplanes)
        row = {
            "name": name, "network": display_name(name), "params": count_params(model),
            "macs": count_macs(model), "conv5_frames": model.get_layer("conv5_1").output.shape[1],
            "kinetics400_frames": kinetics.get(name, []),
        }
        rows.append(row)
        if not args.json:
            print(f"{name:<13} {row['network']:<12} {row['params']:>12,} {row['macs'] / 1e9:>8.2f} "
                  f"{row['conv5_frames']:>10}  "
                  + (", ".join(f"{f}f" for f in row["kinetics400_frames"]) or "-"), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


def moving_square_clip(frames=16, size=112, seed=0):
    """A uint8 clip `(frames, size, size, 3)` of a textured square moving right."""
    import numpy as np

    rng = np.random.default_rng(seed)
    clip = np.full((frames, size, size, 3), 96, np.uint8)
    side = size // 4
    texture = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    top = (size - side) // 2
    for t in range(frames):
        left = (t * (size - side)) // max(frames - 1, 1)
        clip[t, top:top + side, left:left + side] = texture
    return clip


def _demo(args):
    import numpy as np

    from keras_r21d.complexity import count_macs, count_params
    from keras_r21d.models import display_name, get_model

    model = get_model(args.model, input_shape=(args.frames, 112, 112, 3))
    print(f"{display_name(args.model)}: {count_params(model):,} parameters, "
          f"{count_macs(model) / 1e9:.2f} GMAC per {args.frames}-frame clip.")
    print("Weights: random initialisation (no pretrained weights are bundled yet).")
    clip = moving_square_clip(args.frames)
    # Scale to [0, 1] and normalise with the Kinetics statistics of torchvision.
    mean = np.array([0.43216, 0.394666, 0.37645], np.float32)
    std = np.array([0.22803, 0.22145, 0.216989], np.float32)
    batch = ((clip.astype(np.float32) / 255.0 - mean) / std)[None]
    start = time.perf_counter()
    probs = np.asarray(model.predict_on_batch(batch))[0]
    elapsed = time.perf_counter() - start
    print(f"Classified a generated {args.frames}x112x112 clip (a textured square moving right) "
          f"in {elapsed:.2f} s. Top-5 classes:")
    for index in np.argsort(probs)[::-1][:5]:
        print(f"  class {index:>3}  p={probs[index]:.4f}")


def _convert(args):
    from keras_r21d.convert import convert_checkpoint

    metadata = {"frames": args.frames}
    if args.labels == "kinetics400":
        from keras_r21d.labels import kinetics400_labels

        metadata["labels"] = kinetics400_labels()
    elif args.labels:
        from keras_r21d.labels import read_labels

        metadata["labels"] = read_labels(args.labels)
    out = convert_checkpoint(args.src, args.output, arch=args.arch, layout=args.format, metadata=metadata)
    print(f"Wrote preset {out} (every checkpoint tensor used, every weight assigned).")


VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")


def _video_files(paths):
    import pathlib

    files = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
        else:
            files.append(path)
    return files


def _predict(args):
    from keras_r21d.data.video import VideoReadError
    from keras_r21d.inference import clip_length, predict_video
    from keras_r21d.models import get_model

    model = get_model(args.model, weights=args.weights, frames=args.frames)
    frames = clip_length(model, args.frames)
    files = _video_files(args.videos)
    if not files:
        raise ValueError(f"No video found in {args.videos}.")
    progress = _progress(files, disable=args.json or len(files) == 1)
    results, failed = {}, {}
    for path in progress:
        try:
            results[str(path)] = predict_video(model, path, clips=args.clips, frames=frames, top=args.top)
        except VideoReadError as error:
            failed[str(path)] = str(error)
            progress.write(f"skipped: {error}")
            continue
        if not args.json:
            progress.write(f"{path}  ({args.clips} clips x {frames} frames, mean softmax)")
            for index, name, prob in results[str(path)]:
                progress.write(f"  {prob:7.2%}  {name}  ({index})")
    if args.json:
        print(json.dumps({
            "model": args.model, "weights": args.weights, "clips": args.clips, "frames": frames,
            "predictions": {p: [{"index": i, "label": n, "probability": q} for i, n, q in top]
                            for p, top in results.items()},
            "failed": failed,
        }, indent=2))
    if failed:
        print(f"{len(failed)} of {len(files)} videos could not be read.", file=sys.stderr)
        return 1
    return 0


def _progress(items, disable):
    try:
        from tqdm import tqdm
    except ImportError:  # a plain loop that can still print
        class tqdm(list):  # noqa: N801
            def __init__(self, items, **_):
                super().__init__(items)

            @staticmethod
            def write(text):
                print(text)
    return tqdm(items, disable=disable, unit="video")


def _bench_data(args):
    import pathlib

    from keras_r21d.benchmarks import data_throughput, format_data_table

    files = _video_files([args.videos])
    if not files:
        raise ValueError(f"No video found in {args.videos!r}; pass a folder of videos.")
    result = data_throughput([(path, 0) for path in files], model_name=args.model, frames=args.frames,
                             batch_size=args.batch_size, batches=args.batches, train_steps=args.steps)
    print(format_data_table(result))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def build_parser():
    from keras_r21d.models import list_models

    parser = argparse.ArgumentParser(
        prog="keras-r21d", description="The video ResNets of Tran et al. (CVPR 2018) for Keras 3."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the networks with parameters and MACs per clip")
    models.add_argument("pattern", nargs="?", default=None, help="glob on names, e.g. 'mc*'")
    models.add_argument("--frames", type=int, default=16, help="clip length T (default 16)")
    models.add_argument("--size", type=int, default=112, help="crop size H = W (default 112)")
    models.add_argument("--classes", type=int, default=400, help="classifier size (default 400)")
    models.add_argument("--midplanes", choices=("per_conv", "per_block"), default="per_conv",
                        help="(2+1)D width convention (default per_conv, the paper's)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(run=_models_table)

    demo = commands.add_parser("demo", help="build a network and classify a generated clip")
    demo.add_argument("--model", default="r2plus1d_18", choices=list_models())
    demo.add_argument("--frames", type=int, default=16)
    demo.set_defaults(run=_demo)
    predict = commands.add_parser("predict", help="classify videos (top classes, mean over clips)")
    predict.add_argument("videos", nargs="+", help="video files or folders of videos")
    predict.add_argument("--model", default="r2plus1d_18", choices=list_models())
    predict.add_argument("--weights", default="kinetics400",
                         help="preset name or alias, hf://owner/repo[@rev], preset folder or .weights.h5")
    predict.add_argument("--clips", type=int, default=10, help="uniformly spaced clips per video")
    predict.add_argument("--frames", type=int, default=None, help="clip length (default: the weights')")
    predict.add_argument("--top", type=int, default=5)
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    predict.set_defaults(run=_predict)

    bench = commands.add_parser("bench-data", help="clips/s of the data pipeline vs. the model's training")
    bench.add_argument("videos", nargs="?", default="../shared/data/videos", help="folder of videos")
    bench.add_argument("--model", default="r2plus1d_18", choices=list_models())
    bench.add_argument("--frames", type=int, default=16)
    bench.add_argument("--batch-size", type=int, default=4)
    bench.add_argument("--batches", type=int, default=6, help="pipeline batches timed")
    bench.add_argument("--steps", type=int, default=3, help="training steps timed")
    bench.add_argument("--json", help="also write the results to this file")
    bench.set_defaults(run=_bench_data)

    convert = commands.add_parser(
        "convert", help="convert a PyTorch or Caffe2 checkpoint into a preset directory")
    convert.add_argument("src", help=".pth/.pt (zip or legacy), .safetensors or Caffe2 .pkl file")
    convert.add_argument("-o", "--output", required=True, help="preset directory to write")
    convert.add_argument("--arch", choices=list_models(), help="expected network (default: inferred)")
    convert.add_argument("--format", choices=("torchvision", "ig65m", "caffe2"),
                         help="checkpoint layout (default: detected)")
    convert.add_argument("--labels", help="class names: a file with one per line, or 'kinetics400'")
    convert.add_argument("--frames", type=int, help="clip length the checkpoint was trained on")
    convert.set_defaults(run=_convert)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, OSError, RuntimeError) as error:
        print(f"keras-r21d {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
