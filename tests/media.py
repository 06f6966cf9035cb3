"""Video files for tests: writing generated clips and decoding files independently of the
library (a plain sequential PyAV decode)."""

import fractions

import av
import numpy as np


def write_video(path, frames, fps=25):
    """Writes uint8 frames (T, H, W, 3) as MPEG-4 Part 2 (the codec of UCF101's AVIs)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decode_all(path):
    """Every frame of a file, in order, RGB uint8 (T, H, W, 3)."""
    with av.open(str(path), metadata_errors="ignore") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def random_videos(folder, count, frames=10, size=(40, 40), classes=None, seed=0):
    """`count` videos of random pixels in `folder`: `[(path, label)]`, label = index % classes
    (every video its own class when `classes` is None)."""
    rng = np.random.default_rng(seed)
    videos = []
    for k in range(count):
        path = folder / f"v{k}.avi"
        write_video(path, rng.integers(0, 255, (frames, *size, 3), dtype=np.uint8))
        videos.append((path, k % classes if classes else k))
    return videos


def write_timed_video(path, frames, times_ms):
    """An MPEG-4 video whose frame i is shown at times_ms[i] (a variable frame rate)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=1000)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for frame, t in zip(frames, times_ms):
            image = av.VideoFrame.from_ndarray(frame, format="rgb24")
            image.pts, image.time_base = int(t), fractions.Fraction(1, 1000)
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


RATES = {"25": 25, "29.97": fractions.Fraction(30000, 1001), "30": 30}


def write_rate_videos(folder, frames, size, seed=0):
    """Random-pixel videos at 25, 29.97 (NTSC, 30000/1001) and 30 fps, `frames` frames of
    `size` (H, W) each: {"25": path, "29.97": path, "30": path}."""
    rng = np.random.default_rng(seed)
    paths = {}
    for name, fps in RATES.items():
        paths[name] = folder / f"{name}fps.avi"
        write_video(paths[name], rng.integers(0, 255, (frames, *size, 3), dtype=np.uint8), fps=fps)
    return paths


def pyav_times(path):
    """Exact frame times (Fractions, from the first frame) of a sequential PyAV decode."""
    with av.open(str(path), metadata_errors="ignore") as container:
        pts = [(f.pts, f.time_base) for f in container.decode(video=0)]
    return [p * tb - pts[0][0] * pts[0][1] for p, tb in pts]
