"""Writes the golden checkpoint that lets the test suite check conversion without torch.

A tiny R(2+1)D-18 (widths 4/8/16/32, stem width 3, torchvision's per-block (2+1)D
widths, random BN statistics) built from torchvision's own VideoResNet classes, saved
with torch.save, plus a random clip and the logits PyTorch computes for it:

    python tools/make_golden.py tests/data/golden

Run once; the outputs are committed. tests/test_golden.py converts the checkpoint with
keras_r21d (no torch) and compares logits.
"""

import os
import sys

sys.modules.setdefault("triton", None)  # not needed on the CPU

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, VideoResNet  # noqa: E402

SCALE = 16  # 64/128/256/512 channels -> 4/8/16/32
CLASSES = 5


def tiny_stem():
    return nn.Sequential(
        nn.Conv3d(3, 3, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False), nn.BatchNorm3d(3), nn.ReLU(True),
        nn.Conv3d(3, 64 // SCALE, (3, 1, 1), 1, (1, 0, 0), bias=False), nn.BatchNorm3d(64 // SCALE),
        nn.ReLU(True),
    )


class TinyR2Plus1D(VideoResNet):
    def __init__(self):
        super().__init__(BasicBlock, [Conv2Plus1D] * 4, [2, 2, 2, 2], tiny_stem, num_classes=CLASSES)
        self.fc = nn.Linear(512 // SCALE, CLASSES)

    def _make_layer(self, block, conv_builder, planes, blocks, stride=1):
        if planes == 64:
            self.inplanes = 64 // SCALE
        return super()._make_layer(block, conv_builder, planes // SCALE, blocks, stride)


def main(out_dir):
    torch.manual_seed(0)
    model = TinyR2Plus1D()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        logits = model(x).numpy()
    os.makedirs(out_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out_dir, "r2plus1d_tiny.pth"))
    np.save(os.path.join(out_dir, "r2plus1d_tiny.input.npy"), x.permute(0, 2, 3, 4, 1).numpy())
    np.save(os.path.join(out_dir, "r2plus1d_tiny.logits.npy"), logits)
    print(f"wrote {out_dir}: {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/golden")
