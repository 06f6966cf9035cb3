"""Builds the networks independently in PyTorch (torchvision's VideoResNet), writes their
checkpoints in each upstream layout, and saves reference logits.

Run in its own process (importing TensorFlow before torchvision crashes):
    python torch_reference.py OUT_DIR KIND [KIND ...]
KIND is `torchvision:<r3d_18|mc3_18|r2plus1d_18>`, `ig65m` (R(2+1)D-34, per-conv widths,
eps 1e-3) or `caffe2:<registry name>` (the paper's networks written as the Caffe2
release's Python 2 pickle of blobs). Writes OUT_DIR/<file>, <file>.input.npy (NTHWC),
<file>.logits.npy and <file>.features.npy (the classifier's input).
"""

import os
import sys

sys.modules.setdefault("triton", None)  # not needed on the CPU

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models.video import mc3_18, r2plus1d_18, r3d_18  # noqa: E402
from torchvision.models.video.resnet import (  # noqa: E402
    BasicBlock, BasicStem, Conv2Plus1D, Conv3DNoTemporal, Conv3DSimple, R2Plus1dStem, VideoResNet,
)

sys.path.insert(0, os.path.dirname(__file__))
import py2_pickle  # noqa: E402

FRAMES, SIZE = 8, 48
CONV = {"3d": Conv3DSimple, "2d": Conv3DNoTemporal, "2plus1d": Conv2Plus1D}
# REFERENCE section 1: stem and conv type of conv2_x..conv5_x.
PAPER = {
    "r2d": ("r2d", "2d 2d 2d 2d"), "fr2d": ("2d", "2d 2d 2d 2d"), "r3d": ("3d", "3d 3d 3d 3d"),
    "mc2": ("3d", "2d 2d 2d 2d"), "mc3": ("3d", "3d 2d 2d 2d"), "mc4": ("3d", "3d 3d 2d 2d"),
    "mc5": ("3d", "3d 3d 3d 2d"), "rmc2": ("2d", "3d 3d 3d 3d"), "rmc3": ("2d", "2d 3d 3d 3d"),
    "rmc4": ("2d", "2d 2d 3d 3d"), "rmc5": ("2d", "2d 2d 2d 3d"),
    "r2plus1d": ("2plus1d", "2plus1d 2plus1d 2plus1d 2plus1d"),
}
DEPTHS = {10: [1, 1, 1, 1], 16: [2, 2, 2, 1], 18: [2, 2, 2, 2], 26: [2, 3, 4, 3], 34: [3, 4, 6, 3]}


def stem_module(kind, frames):
    if kind == "3d":
        return BasicStem()
    if kind == "2plus1d":
        return R2Plus1dStem()
    kt = 1 if kind == "2d" else frames
    return nn.Sequential(nn.Conv3d(3, 64, (kt, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
                         nn.BatchNorm3d(64), nn.ReLU(inplace=True))


def paper_network(name, classes=400, frames=FRAMES):
    arch, depth = name.rsplit("_", 1)
    stem, stages = PAPER[arch]
    model = VideoResNet(BasicBlock, [CONV[s] for s in stages.split()], DEPTHS[int(depth)],
                        lambda: stem_module(stem, frames), num_classes=classes)
    per_conv_widths(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.eps = 1e-3
    return model


def per_conv_widths(model):
    """torchvision sizes both (2+1)D convs of a block from its input; the paper sizes
    each conv from its own channels (ig65m-pytorch makes the same fix)."""
    for layer in (model.layer2, model.layer3, model.layer4):
        conv2 = layer[0].conv2[0]
        if isinstance(conv2, Conv2Plus1D):
            planes = conv2[3].out_channels
            layer[0].conv2[0] = Conv2Plus1D(planes, planes, 27 * planes * planes // (9 * planes + 3 * planes))


def randomize(model, seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


def caffe2_blobs(model):
    """The model's tensors under the Caffe2 release's blob names (REFERENCE 3b)."""
    blobs = {}

    def bn(module, name):
        for suffix, value in (("s", module.weight), ("b", module.bias), ("rm", module.running_mean),
                              ("riv", module.running_var)):
            blobs[f"{name}_{suffix}"] = value.detach().numpy().copy()

    stem = model.stem
    if isinstance(stem, R2Plus1dStem):
        blobs["conv1_middle_w"] = stem[0].weight.detach().numpy().copy()
        bn(stem[1], "conv1_middle_spatbn_relu")
        blobs["conv1_w"] = stem[3].weight.detach().numpy().copy()
        bn(stem[4], "conv1_spatbn_relu")
    else:
        blobs["conv1_w"] = stem[0].weight.detach().numpy().copy()
        bn(stem[1], "conv1_spatbn_relu")
    c = 0
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            for j, seq in ((1, block.conv1), (2, block.conv2)):
                conv = seq[0]
                if isinstance(conv, Conv2Plus1D):
                    blobs[f"comp_{c}_conv_{j}_middle_w"] = conv[0].weight.detach().numpy().copy()
                    bn(conv[1], f"comp_{c}_spatbn_{j}_middle")
                    blobs[f"comp_{c}_conv_{j}_w"] = conv[3].weight.detach().numpy().copy()
                else:
                    blobs[f"comp_{c}_conv_{j}_w"] = conv.weight.detach().numpy().copy()
                bn(seq[1], f"comp_{c}_spatbn_{j}")
            if block.downsample is not None:
                blobs[f"shortcut_projection_{c}_w"] = block.downsample[0].weight.detach().numpy().copy()
                bn(block.downsample[1], f"shortcut_projection_{c}_spatbn")
            c += 1
    n = model.fc.out_features
    blobs[f"last_out_L{n}_w"] = model.fc.weight.detach().numpy().copy()
    blobs[f"last_out_L{n}_b"] = model.fc.bias.detach().numpy().copy()
    # The release also pickled SGD momentum buffers; they hold no model weight.
    blobs["comp_0_conv_1_w_momentum"] = np.zeros_like(blobs["comp_0_conv_1_w"])
    return blobs


def build(kind, seed):
    if kind.startswith("torchvision:"):
        name = kind.split(":")[1]
        model = {"r3d_18": r3d_18, "mc3_18": mc3_18, "r2plus1d_18": r2plus1d_18}[name]()
        return randomize(model, seed), f"{name}.pth", None
    if kind == "ig65m":
        model = VideoResNet(BasicBlock, [Conv2Plus1D] * 4, [3, 4, 6, 3], R2Plus1dStem, num_classes=359)
        per_conv_widths(model)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.eps = 1e-3
        return randomize(model, seed), "r2plus1d_34_ig65m.pth", None
    name = kind.split(":")[1]
    return randomize(paper_network(name), seed), f"{name}.pkl", "caffe2"


def main(out_dir, kinds):
    for seed, kind in enumerate(kinds):
        model, filename, layout = build(kind, seed)
        path = os.path.join(out_dir, filename)
        if layout == "caffe2":
            py2_pickle.dump({"blobs": caffe2_blobs(model)}, path)
        else:
            torch.save(model.state_dict(), path)
        g = torch.Generator().manual_seed(100 + seed)
        x = torch.randn(2, 3, FRAMES, SIZE, SIZE, generator=g)
        penultimate = []  # what the classifier receives: the pooled clip embedding
        hook = model.fc.register_forward_pre_hook(lambda module, inputs: penultimate.append(inputs[0]))
        with torch.no_grad():
            logits = model(x).numpy()
        hook.remove()
        np.save(path + ".input.npy", x.permute(0, 2, 3, 4, 1).numpy())
        np.save(path + ".logits.npy", logits)
        np.save(path + ".features.npy", penultimate[0].numpy())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
