"""Converts every preset of weights/presets.json from its upstream checkpoint; checks and uploads.

    python tools/convert_presets.py [--only NAME ...] [--cache DIR] [--parity]
                                    [--upload NAMESPACE] [--dry-run]

For each manifest entry: download the origin checkpoint (hash-checked as far as one is
known), convert it strictly and cache the preset (`keras_r21d.presets.fetch_preset`).
`--parity` runs the upstream PyTorch model on the same random clip and compares
logits (max abs error <= 1e-4): torchvision's own r3d_18 / mc3_18 / r2plus1d_18, and
for ig65m torchvision's VideoResNet built the way moabitcoin/ig65m-pytorch builds it
(per-conv widths, BN eps 1e-3). Torch runs in a subprocess: importing TensorFlow before
torchvision crashes. The Caffe2 release has no upstream PyTorch code; its check is the
strict conversion. `--upload NAMESPACE` pushes each preset to `NAMESPACE/<name>` and
prints the `hub` field to paste into the manifest (repo, commit, sha256 of each file).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

TOLERANCE = 1e-4
TORCH_LOGITS = r"""
import sys
sys.modules.setdefault("triton", None)  # not needed on the CPU
import numpy as np, torch
from torch import nn
from torchvision.models.video import resnet as R
src, layout, arch, clip, out = sys.argv[1:]
state = torch.load(src, map_location="cpu", weights_only=True)
classes = state["fc.weight"].shape[0]
if layout == "torchvision":
    model = getattr(R, arch)(num_classes=classes)
else:  # ig65m-pytorch's r2plus1d_34
    model = R.VideoResNet(R.BasicBlock, [R.Conv2Plus1D] * 4, [3, 4, 6, 3], R.R2Plus1dStem, num_classes=classes)
    model.layer2[0].conv2[0] = R.Conv2Plus1D(128, 128, 288)
    model.layer3[0].conv2[0] = R.Conv2Plus1D(256, 256, 576)
    model.layer4[0].conv2[0] = R.Conv2Plus1D(512, 512, 1152)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.eps = 1e-3
model.load_state_dict(state)
model.eval()
with torch.no_grad():
    np.save(out, model(torch.from_numpy(np.load(clip)).permute(0, 4, 1, 2, 3)).numpy())
"""


def parity(entry, preset_dir):
    """Max abs logit error of the preset against the upstream PyTorch model."""
    import numpy as np

    from keras_r21d import presets
    from keras_r21d.presets.files import load_preset

    origin = entry["origin"]
    checkpoint = presets.cache_dir() / "downloads" / origin["filename"]
    if not checkpoint.is_file():
        presets.download(origin["url"], checkpoint, origin["sha256"], origin["sha256_prefix"])
    clip = np.random.default_rng(0).normal(size=(1, entry["frames"], 112, 112, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/clip.npy", clip)
        subprocess.run([sys.executable, "-c", TORCH_LOGITS, str(checkpoint), origin["format"],
                        entry["architecture"], f"{tmp}/clip.npy", f"{tmp}/logits.npy"], check=True)
        expected = np.load(f"{tmp}/logits.npy")
    model = load_preset(preset_dir, classifier_activation=None)
    return float(np.max(np.abs(np.asarray(model.predict_on_batch(clip)) - expected)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="preset names (default: all)")
    parser.add_argument("--cache", help="cache folder (default: $KERAS_R21D_CACHE or ~/.keras/keras_r21d)")
    parser.add_argument("--parity", action="store_true", help="compare logits with upstream PyTorch code")
    parser.add_argument("--upload", metavar="NAMESPACE", help="push each preset to NAMESPACE/<name>")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, download nothing")
    args = parser.parse_args(argv)
    if args.cache:
        os.environ["KERAS_R21D_CACHE"] = os.path.abspath(args.cache)

    from keras_r21d import presets
    from keras_r21d.fileio import sha256_of
    from keras_r21d.presets.cards import model_card

    entries = presets.list_presets()
    if args.only:
        unknown = sorted(set(args.only) - {e["name"] for e in entries})
        if unknown:
            parser.error(f"unknown presets {unknown}; see weights/presets.json")
        entries = [e for e in entries if e["name"] in args.only]
    failures = []
    for entry in entries:
        name, origin = entry["name"], entry["origin"]
        if args.dry_run:
            check = (f"sha256 {origin['sha256']}" if origin["sha256"]
                     else f"sha256 prefix {origin['sha256_prefix']}" if origin["sha256_prefix"]
                     else "no published checksum: strict conversion only")
            target = presets.cache_dir() / "presets" / name
            print(f"{name}: {entry['architecture']} {entry['frames']}f, {origin['format']} <- {origin['url']} "
                  f"({check}) -> {target}{' [cached]' if (target / 'metadata.json').is_file() else ''}"
                  + (" + parity" if args.parity and origin["format"] != "caffe2" else "")
                  + (f" + upload to {args.upload}/{name}" if args.upload else ""))
            continue
        try:
            preset_dir = presets.fetch_preset(name, keep_download=args.parity)
            print(f"{name}: {preset_dir}", flush=True)
            error = None
            if args.parity and origin["format"] != "caffe2":
                error = parity(entry, preset_dir)
                print(f"  parity with upstream PyTorch: max abs logit error {error:.2e}", flush=True)
                if not error <= TOLERANCE:
                    failures.append(f"{name}: parity error {error:.2e} > {TOLERANCE}")
                    continue
            if args.upload:
                repo = f"{args.upload}/{name}"
                card = model_card(preset_dir, repo, entry=entry, parity=error)
                commit = presets.push_to_hub(preset_dir, repo, commit_message=f"keras_r21d preset {name}", card=card)
                hub = {"repo": repo, "revision": commit,
                       "sha256": {f: sha256_of(preset_dir / f) for f in presets.PRESET_FILES}}
                print(f"  uploaded; manifest hub field: {json.dumps(hub)}", flush=True)
        except (OSError, ValueError, RuntimeError, subprocess.CalledProcessError) as error:
            failures.append(f"{name}: {error}")
            print(f"  FAILED: {error}", file=sys.stderr, flush=True)
    if failures:
        print(f"{len(failures)} of {len(entries)} presets failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
