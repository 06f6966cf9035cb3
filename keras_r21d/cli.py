"""The `keras-r21d` command line. Every command is a thin wrapper over the Python API."""

import argparse
import json
import math
import sys


def _ranged(kind, minimum, exclusive=False, maximum=None):
    """An argparse type: a finite `kind` >= `minimum` (> when `exclusive`, < `maximum`);
    anything else is refused at parse time, naming the value and the range."""
    described = f"{'>' if exclusive else '>='} {minimum:g}" + (f" and < {maximum:g}" if maximum is not None else "")
    noun = "an integer" if kind is int else "a number"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}; expected {noun} {described}") from None
        if not math.isfinite(value) or value < minimum or (exclusive and value == minimum) or (
                maximum is not None and value >= maximum):
            raise argparse.ArgumentTypeError(f"{text} is out of range; expected {noun} {described}")
        return value

    parse.__name__ = f"{kind.__name__} {described}"
    return parse


POSITIVE_INT = _ranged(int, 1)
NON_NEGATIVE_INT = _ranged(int, 0)
POSITIVE_FLOAT = _ranged(float, 0, exclusive=True)
NON_NEGATIVE_FLOAT = _ranged(float, 0)


def _models_table(args):
    from keras_r21d.applications import get_model, list_models
    from keras_r21d.models import display_name
    from keras_r21d.models.complexity import count_macs, count_params
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


def _demo(args):
    from keras_r21d.demo import DEMO_NETWORKS, run_demo

    networks = ("fr2d_18", "r2plus1d_18") if args.quick else args.networks or DEMO_NETWORKS
    run_demo(args.output, networks=networks, seeds=args.seeds, progress=args.progress)


def _convert(args):
    from keras_r21d.presets.convert import convert_checkpoint

    metadata = {"frames": args.frames}
    if args.labels == "kinetics400":
        from keras_r21d.presets.labels import kinetics400_labels

        metadata["labels"] = kinetics400_labels()
    elif args.labels:
        from keras_r21d.presets.labels import read_labels

        metadata["labels"] = read_labels(args.labels)
    out = convert_checkpoint(args.src, args.output, arch=args.arch, layout=args.format, metadata=metadata)
    print(f"Wrote preset {out} (every checkpoint tensor used, every weight assigned).")


def _predict(args):
    from keras_r21d.applications import get_model
    from keras_r21d.data.splits import find_videos
    from keras_r21d.inference import clip_length, predict_video
    from keras_r21d.models.optimize import inference_model

    given = [flag for flag, value in (("--window", args.window), ("--stride", args.stride), ("--fps", args.fps),
                                      ("--unit", args.unit), ("--timeline-out", args.timeline_out))
             if value is not None]
    if given and not args.timeline:
        raise ValueError(f"{', '.join(given)} only apply with --timeline (every window of each video).")
    if args.timeline:
        return _predict_timeline(args)
    model = inference_model(get_model(args.model, weights=args.weights, frames=args.frames))
    frames = clip_length(model, args.frames)
    files = find_videos(args.videos)
    if not files:
        raise ValueError(f"No video found in {args.videos}.")
    progress = _progress(files, disable=args.json or len(files) == 1)
    results, failed = {}, {}
    for path in progress:
        try:
            results[str(path)] = predict_video(model, path, clips=args.clips, frames=frames, top=args.top)
        except Exception as error:  # noqa: BLE001 - one bad video must not lose the others' results
            failed[str(path)] = f"{type(error).__name__}: {error}"
            progress.write(f"skipped {path}: {failed[str(path)]}", file=sys.stderr)  # stdout stays JSON
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


def _timeline_prefixes(prefix, files):
    """`{video: output prefix}`: PREFIX for one video, PREFIX_STEM for each of several."""
    import pathlib

    if prefix is None:
        return {}
    if len(files) == 1:
        return {files[0]: pathlib.Path(prefix)}
    prefixes = {path: pathlib.Path(f"{prefix}_{pathlib.Path(path).stem}") for path in files}
    stems = [p.name for p in prefixes.values()]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise ValueError(f"--timeline-out {prefix} names each video's files PREFIX_STEM, but several videos are named "
                         f"{repeated[0].removeprefix(pathlib.Path(prefix).name + '_')!r}; run them one at a time.")
    return prefixes


def _predict_timeline(args):
    from keras_r21d.applications import get_model
    from keras_r21d.data.splits import find_videos
    from keras_r21d.inference import clip_length
    from keras_r21d.models.optimize import inference_model
    from keras_r21d.timeline import (
        check_timeline_arguments,
        plot_timeline,
        predict_timeline,
        timeline_json,
        write_timeline_csv,
        write_timeline_json,
    )

    unit = args.unit or "frames"
    window, _ = check_timeline_arguments(args.window, args.stride, args.fps, unit, args.top)
    files = find_videos(args.videos)
    if not files:
        raise ValueError(f"No video found in {args.videos}.")
    prefixes = _timeline_prefixes(args.timeline_out, files)
    # A --window in frames is also the clip length the network is built for (R2D fixes it).
    model = inference_model(get_model(args.model, weights=args.weights,
                                      frames=args.frames or (window if unit == "frames" else None)))
    if unit == "frames":
        clip_length(model, window)  # a window the network cannot take: refused once, not per video
    progress = _progress(files, disable=args.json or len(files) == 1)
    results, failed = {}, {}
    for path in progress:
        try:
            result = predict_timeline(model, path, window=args.window, stride=args.stride, fps=args.fps, unit=unit,
                                      top=args.top)
            written, prefix = [], prefixes.get(path)
            if prefix is not None:
                prefix.parent.mkdir(parents=True, exist_ok=True)
                written = [write_timeline_json(result, f"{prefix}.json"), write_timeline_csv(result, f"{prefix}.csv"),
                           plot_timeline(result, f"{prefix}.png", top=args.top)]
        except Exception as error:  # noqa: BLE001 - one bad video must not lose the others' results
            failed[str(path)] = f"{type(error).__name__}: {error}"
            progress.write(f"skipped {path}: {failed[str(path)]}", file=sys.stderr)  # stdout stays JSON
            continue
        results[str(path)] = result
        if not args.json:
            size = len(result["frames"][0])
            rate = f" at {result['fps']:g} fps" if result["fps"] else ""
            progress.write(f"{path}  ({len(result['times'])} windows of {size} frames{rate}, every "
                           f"{result['stride']:g} {unit})")
            for (start, end), top in zip(result["times"], result["top"]):
                progress.write(f"  {start:.2f}-{end:.2f} s  " + ", ".join(f"{p:.1%} {name}" for _, name, p in top[:3]))
            if written:
                progress.write(f"Wrote {', '.join(map(str, written))}.")
    if args.json:
        print(json.dumps({
            "model": args.model, "weights": args.weights,
            "timelines": {p: timeline_json(result) for p, result in results.items()}, "failed": failed,
        }, indent=2))
    if failed:
        print(f"{len(failed)} of {len(files)} videos could not be read.", file=sys.stderr)
        return 1
    return 0


def _extract(args):
    from keras_r21d.data.sampling import check_windows
    from keras_r21d.data.splits import find_videos
    from keras_r21d.features import extract_features

    # Before any video is looked for (extract_features checks them again).
    window, stride = check_windows(args.window, args.stride, args.fps, args.unit, args.short, args.tail)
    files = find_videos(args.videos)
    if not files:
        raise ValueError(f"No video found in {args.videos}.")
    result = extract_features(
        args.model, files, args.output, weights=args.weights, layer=args.layer, window=window, stride=stride,
        fps=args.fps, unit=args.unit, short=args.short, tail=args.tail, batch_size=args.batch_size,
        workers=args.workers, progress=not args.no_progress, overwrite=args.overwrite, cluster=args.cluster,
        cluster_workers=args.cluster_workers)
    print(f"Wrote {result['output']}: {result['videos']} videos, {result['windows']} windows extracted in this "
          f"run, {result['resumed']} videos from an interrupted run, {len(result['skipped'])} skipped.")
    return 1 if result["skipped"] else 0


def _explain(args):
    import pathlib

    from keras_r21d.applications import get_model
    from keras_r21d.explain import explain_video, plot_explanation, save_explanation_gif

    if not pathlib.Path(args.video).is_file():
        raise FileNotFoundError(f"{args.video!r} is not a video file.")
    model = get_model(args.model, weights=_weights(args.weights), frames=args.frames)
    prefix = args.output or pathlib.Path(args.video).with_suffix("").name + "_gradcam"
    for k, result in enumerate(explain_video(model, args.video, args.layer, args.class_, args.clips, args.frames)):
        png = plot_explanation(result, f"{prefix}_clip{k}.png")
        gif = save_explanation_gif(result, f"{prefix}_clip{k}.gif")
        t, h, w = result["map"].shape
        print(f"clip {k}: {result['label']} ({100 * result['probability']:.1f}%), {args.layer} map {t}x{h}x{w} "
              f"-> {png}, {gif}")
    return 0


def _progress(items, disable):
    from tqdm import tqdm

    return tqdm(items, disable=disable, unit="video")


def _evaluate(args):
    from keras_r21d.data.protocols import Protocol, get_protocol
    from keras_r21d.evaluation import evaluate

    protocol = None
    custom = {key: value for key, value in (("clips", args.clips), ("crops", args.crops), ("fps", args.fps),
                                             ("frames", args.frames), ("crop", args.crop)) if value is not None}
    if args.resize is not None:
        custom["resize"] = args.resize[0] if len(args.resize) == 1 else tuple(args.resize)
    if args.protocol is not None or {"crops", "fps", "resize", "crop"} & set(custom):
        named = get_protocol(args.protocol or "paper")
        protocol = Protocol(**{**named.record(), **custom, "name": args.protocol or "custom"})
    evaluate(args.dataset, args.root, split=args.split, model=args.model, weights=_weights(args.weights),
             frames=args.frames or 16, clips_per_video=args.clips or 10, batch_size=args.batch_size,
             splits_dir=args.splits_dir, output_dir=args.output, classes=args.classes,
             stride=args.stride, progress=not args.no_progress, protocol=protocol, annotations=args.annotations)


def _weights(value):
    return None if str(value).lower() == "none" else value


def _finetune(args):
    from keras_r21d.training import finetune

    distributed = None
    if args.distributed:
        distributed = {"coordinator": args.coordinator, "num_processes": args.num_processes,
                       "process_id": args.process_id}
    result = finetune(
        dataset=args.dataset, root=args.root, split=args.split, splits_dir=args.splits_dir,
        model=args.model, weights=_weights(args.weights), frames=args.frames, stride=args.stride,
        batch_size=args.batch_size, epochs=args.epochs, long_frames=args.long_frames,
        long_epochs=args.long_epochs, optimizer=args.optimizer, learning_rate=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        schedule=args.schedule, mixed_precision=args.mixed_precision, output_dir=args.output,
        checkpoint_every=args.checkpoint_every, validate=not args.no_validate, eval_clips=args.eval_clips,
        seed=args.seed, push_to_hub=args.push_to_hub, distributed=distributed,
        progress=not args.no_progress, freeze_until=args.freeze_until, freeze_bn=args.freeze_bn,
        dropout=args.dropout, label_smoothing=args.label_smoothing, class_weight=args.class_weight,
        balanced_sampling=args.balanced_sampling, head_lr_multiplier=args.head_lr_multiplier,
    )
    if result["preset"] is not None:
        print(f"Fine-tuned preset: {result['preset']} (run directory {result['run_dir']}).")


def _export(args):
    import numpy as np

    from keras_r21d.applications import get_model
    from keras_r21d.export import default_path, export_model, load_exported

    model = get_model(args.model, weights=_weights(args.weights), frames=args.frames)
    path = args.output or default_path(args.model, args.format)
    calibration = None
    if args.int8:
        from keras_r21d.data.splits import find_videos
        from keras_r21d.inference import video_clips

        files = find_videos(args.int8)
        if not files:
            raise ValueError(f"No video found in {args.int8} to calibrate the int8 ranges with.")
        calibration = np.concatenate([video_clips(model, f, args.int8_clips, args.frames) for f in files])
    export_model(model, path, args.format, frames=args.frames, size=args.size, batch_size=args.batch_size,
                 int8_calibration=calibration)
    print(f"Wrote {args.format} {path} (input and preprocessing in {path.rstrip('/')}.json).")
    if args.check:
        import json as json_
        import pathlib

        shape = json_.loads(pathlib.Path(path.rstrip("/") + ".json").read_text())["input_shape"]
        x = np.random.default_rng(0).normal(size=[n or 1 for n in shape]).astype("float32")
        difference = np.abs(load_exported(path, args.format)(x) - model.predict_on_batch(x)).max()
        print(f"Checked in its own runtime: max |exported - keras| = {difference:.2e} on a random clip.")
        if not difference < 1e-4 and not args.int8:
            return 1
    return 0


def build_parser():
    from keras_r21d.applications import list_models

    parser = argparse.ArgumentParser(
        prog="keras-r21d", description="The video ResNets of Tran et al. (CVPR 2018) for Keras 3."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the networks with parameters and MACs per clip")
    models.add_argument("pattern", nargs="?", default=None, help="glob on names, e.g. 'mc*'")
    models.add_argument("--frames", type=POSITIVE_INT, default=16, help="clip length T (default 16)")
    models.add_argument("--size", type=POSITIVE_INT, default=112, help="crop size H = W (default 112)")
    models.add_argument("--classes", type=POSITIVE_INT, default=400, help="classifier size (default 400)")
    models.add_argument("--midplanes", choices=("per_conv", "per_block"), default="per_conv",
                        help="(2+1)D width convention (default per_conv, the paper's)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(run=_models_table)

    demo = commands.add_parser(
        "demo", help="offline demo: small networks of the paper learn motion on a generated dataset")
    demo.add_argument("-o", "--output", help="where the dataset and runs go (default: a temporary folder)")
    demo.add_argument("--networks", nargs="+", choices=list_models("*_18"), help="default: f-R2D R2D MC3 R3D R(2+1)D")
    demo.add_argument("--quick", action="store_true", help="f-R2D and R(2+1)D only")
    demo.add_argument("--seeds", type=POSITIVE_INT, default=2, help="training runs per network (default 2)")
    demo.add_argument("--progress", action="store_true", help="show Keras progress bars")
    demo.set_defaults(run=_demo)
    predict = commands.add_parser("predict", help="classify videos (top classes, mean over clips)")
    predict.add_argument("videos", nargs="+", help="video files or folders of videos")
    predict.add_argument("--model", default="r2plus1d_18", choices=list_models())
    predict.add_argument("--weights", default="kinetics400",
                         help="preset name or alias, hf://owner/repo[@rev], preset folder or .weights.h5")
    predict.add_argument("--clips", type=POSITIVE_INT, default=10, help="uniformly spaced clips per video")
    predict.add_argument("--frames", type=POSITIVE_INT, default=None, help="clip length (default: the weights')")
    predict.add_argument("--top", type=POSITIVE_INT, default=5)
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    predict.add_argument("--timeline", action="store_true",
                         help="score every window instead of uniform clips: the top classes over time")
    predict.add_argument("--window", type=POSITIVE_FLOAT, default=None,
                         help="timeline window length in --unit (default: the clip length, --frames or the weights')")
    predict.add_argument("--stride", type=POSITIVE_FLOAT, default=None,
                         help="timeline window step in --unit (default: the window)")
    predict.add_argument("--fps", type=POSITIVE_FLOAT, default=None,
                         help="timeline: sample frames at this rate (default: the video's own frames)")
    predict.add_argument("--unit", choices=("frames", "seconds"), default=None,
                         help="of --window and --stride (default frames)")
    predict.add_argument("--timeline-out", metavar="PREFIX",
                         help="write PREFIX.json, PREFIX.csv and PREFIX.png (several videos: PREFIX_STEM.*)")
    predict.set_defaults(run=_predict)

    extract = commands.add_parser("extract", help="clip features of every window of videos, into one HDF5 file")
    extract.add_argument("videos", nargs="+", help="video files or folders of videos")
    extract.add_argument("-o", "--output", required=True, help="the HDF5 file to write (e.g. features.h5)")
    extract.add_argument("--model", default="r2plus1d_18", choices=list_models())
    extract.add_argument("--weights", default="kinetics400",
                         help="preset name or alias, hf://owner/repo[@rev], preset folder or .weights.h5")
    extract.add_argument("--layer", default="pool", choices=("pool", "conv1", "conv2", "conv3", "conv4", "conv5"),
                         help="pool: the pooled clip embedding (default); convN: a stage's feature map")
    extract.add_argument("--window", type=POSITIVE_FLOAT, default=16, help="window length (default 16 frames)")
    extract.add_argument("--stride", type=POSITIVE_FLOAT, default=None, help="window step (default: the window)")
    extract.add_argument("--unit", choices=("frames", "seconds"), default="frames", help="of --window and --stride")
    extract.add_argument("--fps", type=POSITIVE_FLOAT, default=None,
                         help="sample frames at this rate (default: the video's own frames)")
    extract.add_argument("--short", choices=("loop", "pad"), default="loop",
                         help="a video shorter than a window: loop over its frames or repeat the last")
    extract.add_argument("--tail", choices=("shift", "pad", "drop"), default="shift",
                         help="frames after the last full window: a window ending at the end, padded, or none")
    extract.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="windows per network call")
    extract.add_argument("--workers", type=POSITIVE_INT, default=2, help="decoding threads")
    extract.add_argument("--cluster", default=None,
                         help="spread the videos over a Ray cluster: local (started here), auto, or ray://host:port")
    extract.add_argument("--cluster-workers", type=POSITIVE_INT, default=2, help="Ray workers, one network each")
    extract.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    extract.add_argument("--no-progress", action="store_true")
    extract.set_defaults(run=_extract)

    explain = commands.add_parser("explain", help="Grad-CAM: where and when the network looked (PNG grid, GIF)")
    explain.add_argument("video", help="a video file")
    explain.add_argument("-o", "--output", default=None,
                         help="file prefix: writes PREFIX_clipK.png and .gif (default: the video's name)")
    explain.add_argument("--model", default="r2plus1d_18", choices=list_models())
    explain.add_argument("--weights", default="kinetics400",
                         help="preset name or alias, hf://owner/repo[@rev], preset folder or .weights.h5")
    explain.add_argument("--class", dest="class_", default=None, help="class name or index (default: the top one)")
    explain.add_argument("--layer", default="conv5", choices=("conv1", "conv2", "conv3", "conv4", "conv5"))
    explain.add_argument("--clips", type=POSITIVE_INT, default=1, help="uniformly spaced clips to explain")
    explain.add_argument("--frames", type=POSITIVE_INT, default=None, help="clip length (default: the weights')")
    explain.set_defaults(run=_explain)

    evaluate = commands.add_parser("evaluate", help="clip@1, video@1/@5 per split and their mean")
    evaluate.add_argument("dataset", choices=("ucf101", "hmdb51", "kinetics400", "kinetics600", "kinetics700"))
    evaluate.add_argument("root", help="folder of the dataset's videos")
    evaluate.add_argument("--split", default="1", choices=("1", "2", "3", "all", "train", "validate", "test"),
                          help="official split, or 'all' for the 3 splits and their mean; Kinetics: the CSV's "
                               "split (default validate)")
    evaluate.add_argument("--annotations", help="Kinetics: the official annotation CSV")
    evaluate.add_argument("--protocol", choices=("torchvision", "paper", "mmaction2"),
                          help="a named test protocol (the flags below override its parts)")
    evaluate.add_argument("--crops", type=int, choices=(1, 3, 10), help="1 center, 3 (ThreeCrop) or 10 (TenCrop)")
    evaluate.add_argument("--fps", type=POSITIVE_FLOAT, help="sample the videos at this frame rate")
    evaluate.add_argument("--resize", type=POSITIVE_INT, nargs="+", metavar="SIDE",
                          help="H W, or one short side (aspect kept)")
    evaluate.add_argument("--crop", type=POSITIVE_INT, help="side of the square crops")
    evaluate.add_argument("--model", default="r2plus1d_18", choices=list_models())
    evaluate.add_argument("--weights", default="kinetics400",
                          help="preset name or alias, hf://owner/repo[@rev], preset folder, .weights.h5 "
                               "or 'none'")
    evaluate.add_argument("--frames", type=POSITIVE_INT, default=None, help="clip length (default 16)")
    evaluate.add_argument("--clips", type=POSITIVE_INT, default=None, help="clips per video (default 10)")
    evaluate.add_argument("--stride", type=POSITIVE_INT, default=1, help="temporal stride in a clip")
    evaluate.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="clips per forward pass")
    evaluate.add_argument("--splits-dir", help="folder of the official split lists")
    evaluate.add_argument("--classes", type=POSITIVE_INT, help="replace the classifier (smoke tests only)")
    evaluate.add_argument("-o", "--output", help="write metrics.json and confusion PNGs here")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.set_defaults(run=_evaluate)

    tune = commands.add_parser("finetune", help="fine-tune a network on UCF101, HMDB51 or a folder per class")
    tune.add_argument("dataset", choices=("ucf101", "hmdb51", "folder"))
    tune.add_argument("root", help="folder of the dataset's videos")
    tune.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    tune.add_argument("--splits-dir", help="folder of the official split lists")
    tune.add_argument("--model", default="r2plus1d_18", choices=list_models())
    tune.add_argument("--weights", default="kinetics400", help="pretrained weights, or 'none'")
    tune.add_argument("--frames", type=POSITIVE_INT, default=16, help="training clip length")
    tune.add_argument("--stride", type=POSITIVE_INT, default=1)
    tune.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="clips per step (per process)")
    tune.add_argument("--epochs", type=POSITIVE_INT, default=8)
    tune.add_argument("--long-frames", type=POSITIVE_INT, help="then fine-tune on clips this long ...")
    tune.add_argument("--long-epochs", type=NON_NEGATIVE_INT, default=0, help="... for this many more epochs")
    tune.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    tune.add_argument("--lr", type=POSITIVE_FLOAT, default=1e-3, help="peak learning rate")
    tune.add_argument("--momentum", type=_ranged(float, 0, maximum=1), default=0.9)
    tune.add_argument("--weight-decay", type=NON_NEGATIVE_FLOAT, default=1e-4)
    tune.add_argument("--warmup-epochs", type=NON_NEGATIVE_FLOAT, default=1)
    tune.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine")
    tune.add_argument("--mixed-precision", action="store_true", help="mixed bfloat16")
    tune.add_argument("--freeze-until", choices=("conv1", "conv2", "conv3", "conv4", "conv5"),
                      help="freeze the stem (conv1) and the stages up to this one")
    tune.add_argument("--freeze-bn", action="store_true", help="keep every batch-norm layer as loaded")
    tune.add_argument("--dropout", type=_ranged(float, 0, maximum=1), default=0.0,
                      help="dropout rate before the classifier (e.g. 0.5)")
    tune.add_argument("--label-smoothing", type=_ranged(float, 0, maximum=1), default=0.0)
    tune.add_argument("--class-weight", choices=("balanced",),
                      help="weigh the loss of each class by N / (classes x its videos)")
    tune.add_argument("--balanced-sampling", action="store_true",
                      help="draw every class equally often in each epoch")
    tune.add_argument("--head-lr-multiplier", type=POSITIVE_FLOAT, default=1.0,
                      help="the classifier's learning rate is --lr times this (e.g. 10)")
    tune.add_argument("-o", "--output", default="runs/finetune", help="run directory (resumed if present)")
    tune.add_argument("--checkpoint-every", type=POSITIVE_INT, default=100, help="steps between checkpoints")
    tune.add_argument("--no-validate", action="store_true", help="no per-epoch validation")
    tune.add_argument("--eval-clips", type=NON_NEGATIVE_INT, default=10,
                      help="clips per video of the final evaluation (0: none)")
    tune.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    tune.add_argument("--push-to-hub", help="owner/repo to upload the final preset to")
    tune.add_argument("--no-progress", action="store_true")
    tune.add_argument("--distributed", action="store_true",
                      help="multi-process (JAX backend) or multi-device training; see the README")
    tune.add_argument("--coordinator", help="host:port of process 0 (or $KERAS_R21D_COORDINATOR)")
    tune.add_argument("--num-processes", type=POSITIVE_INT, help="(or $KERAS_R21D_NUM_PROCESSES)")
    tune.add_argument("--process-id", type=NON_NEGATIVE_INT, help="(or $KERAS_R21D_PROCESS_ID)")
    tune.set_defaults(run=_finetune)

    export = commands.add_parser(
        "export", help="write a network as a TF SavedModel, a TFLite file or an ONNX file")
    export.add_argument("model", choices=list_models(), metavar="MODEL", help="registered network name")
    export.add_argument("--format", choices=("savedmodel", "tflite", "onnx"), default="savedmodel")
    export.add_argument("--weights", default="kinetics400",
                        help="preset name or alias, hf://owner/repo[@rev], preset folder, .weights.h5 or 'none'")
    export.add_argument("-o", "--output", help="folder (savedmodel) or file (default: MODEL[.tflite|.onnx])")
    export.add_argument("--frames", type=POSITIVE_INT, help="clip length of the exported input (default: the weights')")
    export.add_argument("--size", type=POSITIVE_INT, help="input height = width (default 112)")
    export.add_argument("--batch-size", type=POSITIVE_INT, help="fixed batch size (default: any; TFLite: 1)")
    export.add_argument("--int8", nargs="+", metavar="VIDEO",
                        help="TFLite: quantize to int8, calibrated on clips of these videos or folders "
                             "(faster, not exact)")
    export.add_argument("--int8-clips", type=POSITIVE_INT, default=4, help="calibration clips per video (default 4)")
    export.add_argument("--check", action="store_true",
                        help="run the artifact in its own runtime and compare with Keras (to 1e-4)")
    export.set_defaults(run=_export)

    convert = commands.add_parser(
        "convert", help="convert a PyTorch or Caffe2 checkpoint into a preset directory")
    convert.add_argument("src", help=".pth/.pt (zip or legacy), .safetensors or Caffe2 .pkl file")
    convert.add_argument("-o", "--output", required=True, help="preset directory to write")
    convert.add_argument("--arch", choices=list_models(), help="expected network (default: inferred)")
    convert.add_argument("--format", choices=("torchvision", "ig65m", "caffe2"),
                         help="checkpoint layout (default: detected)")
    convert.add_argument("--labels", help="class names: a file with one per line, or 'kinetics400'")
    convert.add_argument("--frames", type=POSITIVE_INT, help="clip length the checkpoint was trained on")
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
