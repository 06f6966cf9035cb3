"""Independent NumPy implementations of the operations, written from their definitions
(PyTorch's Conv3d with symmetric zero padding, inference-mode BatchNorm)."""

import numpy as np


def conv3d(x, kernel, strides=(1, 1, 1), padding=(0, 0, 0)):
    """x: (N, T, H, W, C); kernel: (kT, kH, kW, C, O); PyTorch-style symmetric padding."""
    x = np.pad(x.astype(np.float64), [(0, 0)] + [(p, p) for p in padding] + [(0, 0)])
    k = kernel.astype(np.float64)
    out_sizes = [(n - kk) // s + 1 for n, kk, s in zip(x.shape[1:4], k.shape[:3], strides)]
    out = np.zeros([x.shape[0], *out_sizes, k.shape[4]])
    for a in range(k.shape[0]):
        for b in range(k.shape[1]):
            for c in range(k.shape[2]):
                patch = x[
                    :,
                    a: a + strides[0] * out_sizes[0]: strides[0],
                    b: b + strides[1] * out_sizes[1]: strides[1],
                    c: c + strides[2] * out_sizes[2]: strides[2],
                ]
                out += patch @ k[a, b, c]
    return out


def batchnorm(x, gamma, beta, mean, var, eps):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def relu(x):
    return np.maximum(x, 0.0)


def bn_params(layer):
    return [np.asarray(v) for v in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)]


def _interpolation_matrix(in_size, out_size):
    """(out, in) matrix of PyTorch's bilinear, align_corners=False, in float64.

    The source coordinates are rounded to float32 once, as PyTorch's CPU kernel
    computes them for float32 frames (a float32 scale and one fused multiply-add).
    """
    scale = float(np.float32(in_size) / np.float32(out_size))
    matrix = np.zeros((out_size, in_size))
    for i in range(out_size):
        source = max(float(np.float32(scale * (i + 0.5) - 0.5)), 0.0)
        low = min(int(source), in_size - 1)
        high = min(low + 1, in_size - 1)
        matrix[i, low] += 1.0 - (source - low)
        matrix[i, high] += source - low
    return matrix


def bilinear_resize(x, size):
    """Resizes the H, W axes (-3, -2) of `x` to `size` as PyTorch's bilinear, in float64."""
    rows = _interpolation_matrix(x.shape[-3], size[0])
    cols = _interpolation_matrix(x.shape[-2], size[1])
    return np.einsum("oh,...hwc,pw->...opc", rows, x.astype("float64"), cols, optimize=True)
