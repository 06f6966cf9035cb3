"""A generated motion dataset in the UCF101 layout, for the offline demo and tests.

Every video shows a bright textured square on a dark textured background; both
textures, the square's size and its position are drawn at random per video, the same
way for every class, so a single frame says nothing about the class. The class is the
motion:

- "MoveLeft" / "MoveRight" and "Shrink" / "Grow" are pairs whose videos are the time
  reversal of each other's (the first of each pair is rendered as the second played
  backwards): the *set* of frames has the same distribution in both classes of a pair,
  only their *order* differs. A network that looks at frames one at a time and
  averages over time (f-R2D) cannot beat chance within a pair.
- "MoveUp" (a motion without its reversal among the classes) and "Still" (no motion).

A horizontal flip turns "MoveLeft" into "MoveRight": train on this dataset without
random flips (the demo does).
"""

import pathlib

import numpy as np

MOTION_CLASSES = ("MoveLeft", "MoveRight", "Grow", "Shrink", "MoveUp", "Still")
ORDER_PAIRS = (("MoveLeft", "MoveRight"), ("Shrink", "Grow"))
CLIPS_PER_GROUP = 4  # UCF101 groups hold clips cut from one longer video


def _texture(rng, height, width, cell):
    """Blocky random colour texture of `height` x `width` (cells of `cell` pixels)."""
    cells = rng.integers(0, 256, (height // cell + 1, width // cell + 1, 3)).astype(np.uint8)
    return np.repeat(np.repeat(cells, cell, 0), cell, 1)[:height, :width]


def _resize_nearest(image, side):
    rows = np.arange(side) * image.shape[0] // side
    return image[rows][:, rows]


def render_clip(kind, frames, size, rng):
    """One video of motion `kind`: uint8 `(frames, H, W, 3)`.

    Args:
        kind: one of `MOTION_CLASSES`.
        frames: number of frames.
        size: `(H, W)`.
        rng: a `numpy.random.Generator`.
    """
    if kind not in MOTION_CLASSES:
        raise ValueError(f"Unknown motion {kind!r}; expected one of {MOTION_CLASSES}.")
    reversed_of = {"MoveLeft": "MoveRight", "Shrink": "Grow"}
    if kind in reversed_of:
        return render_clip(reversed_of[kind], frames, size, rng)[::-1].copy()
    height, width = size
    # Dark background, bright square: the object is easy to see, its motion is the task.
    background = _texture(rng, height, width, int(rng.integers(4, 9))) // 3
    small, large = max(4, min(size) // 6), max(6, min(size) // 3)
    square = 160 + _texture(rng, large, large, int(rng.integers(2, 5))) // 3
    t = np.arange(frames) / max(frames - 1, 1)  # 0 .. 1 over the video
    side = np.full(frames, int(rng.integers(small, large + 1)))
    if kind == "Grow":
        side = np.round(small + (large - small) * t).astype(int)
    top = np.full(frames, int(rng.integers(0, height - side.max() + 1)))
    left = np.full(frames, int(rng.integers(0, width - side.max() + 1)))
    if kind == "Grow":  # about a fixed centre
        top, left = top + (large - side) // 2, left + (large - side) // 2
    if kind in ("MoveRight", "MoveUp"):  # across at least half the free width or height
        extent = width if kind == "MoveRight" else height
        travel = int(rng.integers((extent - side[0]) // 2, extent - side[0] + 1))
        start = int(rng.integers(0, extent - side[0] - travel + 1))
        position = np.round(start + travel * t).astype(int)
        if kind == "MoveRight":
            left = position
        else:
            top = position[::-1]  # upwards
    clip = np.repeat(background[None], frames, axis=0)
    for i in range(frames):
        clip[i, top[i]:top[i] + side[i], left[i]:left[i] + side[i]] = _resize_nearest(square, side[i])
    return clip


def write_avi(path, clip, fps=25):
    """Writes uint8 frames as MPEG-4 Part 2 in AVI (UCF101's format)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = clip.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "3"}
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_motion_dataset(root, classes=MOTION_CLASSES, videos_per_class=24, frames=24, size=(64, 64), fps=25,
                        seed=0, splits=3):
    """Writes the motion dataset as UCF101 is distributed; returns a summary dict.

    `root/<Class>/v_<Class>_gXX_cYY.avi` and `root/ucfTrainTestlist/` with `classInd.txt`,
    `trainlist0k.txt` and `testlist0k.txt` (CRLF, 1-based labels). As in UCF101, the
    clips of a group never straddle train and test: split k tests on the k-th block of
    groups.

    Args:
        root: output folder.
        classes: motion classes to include (default all of `MOTION_CLASSES`).
        videos_per_class: a multiple of 4 giving a multiple of `splits` groups.
        frames, size, fps: of every video; `size` is `(H, W)` with even sides.
        seed: everything is drawn from it.
        splits: number of official-style splits to write.

    Returns:
        dict with `root`, `splits_dir`, `classes`, `videos` and `counts`
        (`{split: {"train": n, "test": n}}`).
    """
    root = pathlib.Path(root)
    groups = videos_per_class // CLIPS_PER_GROUP
    if videos_per_class % CLIPS_PER_GROUP or groups < splits or groups % splits:
        raise ValueError(
            f"videos_per_class must be a multiple of {CLIPS_PER_GROUP} giving a multiple of {splits} groups "
            f"(e.g. {CLIPS_PER_GROUP * splits * 2}); received {videos_per_class}."
        )
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"`size` must have even sides (yuv420p); received {size}.")
    rng = np.random.default_rng(seed)
    items = []
    for label, kind in enumerate(classes):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for g in range(1, groups + 1):
            for c in range(1, CLIPS_PER_GROUP + 1):
                relative = f"{kind}/v_{kind}_g{g:02d}_c{c:02d}.avi"
                write_avi(root / relative, render_clip(kind, frames, size, rng), fps)
                items.append((g, relative, label))
    lists = root / "ucfTrainTestlist"
    lists.mkdir(exist_ok=True)
    (lists / "classInd.txt").write_bytes("".join(f"{i + 1} {k}\r\n" for i, k in enumerate(classes)).encode())
    counts = {}
    per_split = groups // splits
    for k in range(1, splits + 1):
        test_groups = range((k - 1) * per_split + 1, k * per_split + 1)
        train = [f"{rel} {label + 1}\r\n" for g, rel, label in items if g not in test_groups]
        test = [f"{rel}\r\n" for g, rel, _ in items if g in test_groups]
        (lists / f"trainlist0{k}.txt").write_bytes("".join(train).encode())
        (lists / f"testlist0{k}.txt").write_bytes("".join(test).encode())
        counts[k] = {"train": len(train), "test": len(test)}
    return {"root": root, "splits_dir": lists, "classes": list(classes), "videos": len(items), "counts": counts}
