"""Test-time protocols: which clips and crops of a video a classifier sees.

A protocol is a small record that prints itself: clips per video and how their starts
are spread, the clip length, the frame rate the video is sampled at, the resize and
the crops. Three are named after the codebases whose published numbers they reproduce:

- `torchvision`: 5 clips of 16 frames at 15 fps (torchvision's `VideoClips(frame_rate=15)`
  and `UniformClipSampler`: starts `floor(linspace(0, windows - 1, 5))` over every
  16-sample window), frames resized to 128x171, center crop 112.
- `paper`: 10 uniformly spaced clips at the network's own clip length and the video's
  own frames, 128x171, center crop 112 (Tran et al. 2018).
- `mmaction2`: 10 clips x 3 crops: mmaction2's `SampleFrames(test_mode=True)` starts (the
  middle of 10 equal segments), the short side resized to the crop, `ThreeCrop` (three
  squares along the long side).

Crops follow mmaction2's definitions: `ThreeCrop` needs the crop to span the short
side and steps `(long - crop) // 2` along the long one; `TenCrop` takes the four
corners and the center with steps `(side - crop) // 4`, then the same five flipped.
The center crop is torchvision's (`int(round((side - crop) / 2))`).
"""

import dataclasses

import numpy as np

from keras_r21d.data.preprocessing import KINETICS_MEAN, KINETICS_STD, _crop_offset, resize_crop_numpy
from keras_r21d.data.sampling import check_fps, resample

SAMPLINGS = ("uniform", "torchvision", "mmaction2")
CROPS = (1, 3, 10)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Which views of a video are classified; their probabilities are averaged.

    Attributes:
        name: what to call it in tables.
        clips: clips per video.
        crops: 1 (center), 3 (mmaction2's ThreeCrop) or 10 (TenCrop: corners, center,
            and the five flipped).
        frames: clip length; None: the network's own (or the one its weights were
            trained with).
        fps: the rate the video is sampled at; None: its own frames.
        resize: `(height, width)` every frame is resized to, or one int: the short
            side, the aspect ratio kept (mmaction2's `Resize(scale=(-1, side))`).
        crop: side of the square crops.
        sampling: how clip starts are spread: "uniform" (the paper's), "torchvision",
            "mmaction2" (see the module docstring).
    """

    name: str = "custom"
    clips: int = 10
    crops: int = 1
    frames: int = None
    fps: float = None
    resize: object = (128, 171)
    crop: int = 112
    sampling: str = "uniform"

    def __post_init__(self):
        for key in ("clips", "crop"):
            value = getattr(self, key)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"Protocol `{key}` must be a positive integer; received {value!r}.")
        if self.frames is not None and not (isinstance(self.frames, int) and self.frames > 0):
            raise ValueError(f"Protocol `frames` must be a positive integer or None; received {self.frames!r}.")
        if self.crops not in CROPS:
            raise ValueError(f"Protocol `crops` must be one of {CROPS}; received {self.crops!r}.")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"Protocol `sampling` must be one of {SAMPLINGS}; received {self.sampling!r}.")
        check_fps(self.fps)
        sides = (self.resize,) if isinstance(self.resize, int) else tuple(self.resize)
        if len(sides) not in (1, 2) or not all(isinstance(s, int) and s > 0 for s in sides):
            raise ValueError(f"Protocol `resize` must be (height, width) or a short side; received {self.resize!r}.")
        object.__setattr__(self, "resize", self.resize if isinstance(self.resize, int) else tuple(self.resize))
        if min(sides) < self.crop:
            raise ValueError(f"Protocol crop {self.crop} does not fit in frames resized to {self.resize}.")

    def __str__(self):
        crops = {1: "center crop", 3: "3 crops (ThreeCrop)", 10: "10 crops (TenCrop)"}[self.crops]
        resize = f"short side {self.resize}" if isinstance(self.resize, int) else "x".join(map(str, self.resize))
        frames = f"{self.frames} frames" if self.frames else "the network's clip length"
        rate = f"at {self.fps:g} fps" if self.fps else "at the video's own rate"
        return (f"{self.name}: {self.clips} clips x {self.crops} crop{'s' * (self.crops > 1)} per video "
                f"({self.sampling} spacing), {frames} {rate}, resize {resize}, {crops} {self.crop}")

    def record(self):
        """The protocol as JSON-ready data (for metrics.json)."""
        record = dataclasses.asdict(self)
        record["resize"] = record["resize"] if isinstance(record["resize"], int) else list(record["resize"])
        return record


PROTOCOLS = {
    "torchvision": Protocol("torchvision", clips=5, frames=16, fps=15, sampling="torchvision"),
    "paper": Protocol("paper", clips=10),
    "mmaction2": Protocol("mmaction2", clips=10, crops=3, resize=112, sampling="mmaction2"),
}


def get_protocol(protocol):
    """A `Protocol` from a name of `PROTOCOLS` or a Protocol."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; named protocols: {', '.join(PROTOCOLS)} "
                         "(or build a keras_r21d.data.protocols.Protocol).")
    return PROTOCOLS[protocol]


def clip_starts(count, length, clips, sampling="uniform"):
    """Starts (sample positions) of `clips` clips of `length` samples among `count`."""
    if sampling == "uniform":
        from keras_r21d.data.video import uniform_clip_starts

        return uniform_clip_starts(count, length, clips)
    if sampling == "torchvision":  # UniformClipSampler over the windows of every start
        windows = max(count - length + 1, 1)  # a short video: one looped clip (torchvision drops it)
        return [int(s) for s in np.floor(np.linspace(0, windows - 1, clips))]
    if sampling == "mmaction2":  # SampleFrames._get_test_clips: the middle of `clips` segments
        interval = (count - length + 1) / float(clips)
        if count > length - 1:
            return [int(s) for s in (np.arange(clips) * interval + interval / 2.0).astype(np.int32)]
        return [0] * clips
    raise ValueError(f"Unknown sampling {sampling!r}; expected one of {SAMPLINGS}.")


def resized_size(height, width, resize):
    """`(height, width)` after `resize`: a pair as it is, an int as the short side with the
    aspect ratio kept (mmcv's `rescale_size`: each side times `short / min(h, w)`, rounded)."""
    if not isinstance(resize, int):
        return tuple(resize)
    scale = resize / min(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def crop_boxes(height, width, crop, crops=1):
    """`(top, left, flipped)` of each crop of `crop` x `crop` in frames of `height` x `width`."""
    if crop > min(height, width):
        raise ValueError(f"A {crop}x{crop} crop does not fit in {height}x{width} frames.")
    if crops == 1:
        return [(_crop_offset(height, crop), _crop_offset(width, crop), False)]
    if crops == 3:  # mmaction2 ThreeCrop: along the long side, the crop spanning the short one
        if crop == height:
            step = (width - crop) // 2
            return [(0, 0, False), (0, 2 * step, False), (0, step, False)]
        if crop == width:
            step = (height - crop) // 2
            return [(0, 0, False), (2 * step, 0, False), (step, 0, False)]
        raise ValueError(f"Three crops span the short side: resize the short side to the crop ({crop}); frames "
                         f"are {height}x{width}.")
    if crops == 10:  # mmaction2 TenCrop: corners and center, then the same flipped
        h_step, w_step = (height - crop) // 4, (width - crop) // 4
        corners = [(0, 0), (0, 4 * w_step), (4 * h_step, 0), (4 * h_step, 4 * w_step), (2 * h_step, 2 * w_step)]
        return [(top, left, False) for top, left in corners] + [(top, left, True) for top, left in corners]
    raise ValueError(f"`crops` must be one of {CROPS}; received {crops!r}.")


def clip_frames(times, protocol, frames):
    """Frame numbers of each clip of `protocol` for a video whose frames show at `times`:
    an int array `(clips, frames)`; a video shorter than a clip loops over its samples."""
    numbers, _, _ = resample(times, protocol.fps)
    count = len(numbers)
    clips = []
    for start in clip_starts(count, frames, protocol.clips, protocol.sampling):
        positions = np.arange(start, start + frames)
        clips.append(numbers[positions % count if start + frames > count else positions])
    return np.stack(clips)


def protocol_views(path, protocol, frames, mean=KINETICS_MEAN, std=KINETICS_STD):
    """The views of a video file under `protocol`, preprocessed: float32
    `(clips * crops, frames, crop, crop, 3)`, clip-major (the crops of clip 0 first).

    Only the frames the clips need are decoded, each once.
    """
    from keras_r21d.data.video import frame_times, read_frames

    protocol = get_protocol(protocol)
    numbers = clip_frames(frame_times(path), protocol, frames)
    decoded = read_frames(path, numbers.ravel())
    decoded = decoded.reshape(numbers.shape + decoded.shape[1:])
    height, width = decoded.shape[2:4]
    size = resized_size(height, width, protocol.resize)
    boxes = crop_boxes(*size, protocol.crop, protocol.crops)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    views = []
    for clip in decoded:
        for top, left, flipped in boxes:
            view = resize_crop_numpy(clip, size, top, left, (protocol.crop, protocol.crop))
            views.append((view[:, :, ::-1] if flipped else view) / 255.0)
    return ((np.stack(views) - mean) / std).astype(np.float32)
