"""The official UCF101 and HMDB51 splits, parsed as distributed, and folder-per-class data.

UCF101 (`ucfTrainTestlist/`): `classInd.txt` numbers the 101 classes from 1;
`trainlist0k.txt` lines are `Class/v_Class_gXX_cYY.avi <label>`, `testlist0k.txt` lines
`Class/v_Class_gXX_cYY.avi`; CRLF line endings. The folder `HandstandPushups` holds files
named `v_HandStandPushups_*`, so a class is found from the folder, never the file name.

HMDB51 (`testTrainMulti_7030_splits/`): `<class>_test_split<k>.txt`, lines
`<video>.avi <tag>` with tag 1 = train, 2 = test, 0 = not used in that split. Classes are
numbered in sorted name order, as mmaction2 and the TSN lists do.

Labels are 0-based. Videos are expected at `root/<class>/<file>` (how both archives unpack).
"""

import logging
import pathlib

log = logging.getLogger("keras_r21d")

DATASETS = ("ucf101", "hmdb51")
SUBSETS = ("train", "test")
SPLITS = (1, 2, 3)
SPLITS_FOLDER = {"ucf101": "ucfTrainTestlist", "hmdb51": "testTrainMulti_7030_splits"}
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")


class DatasetError(ValueError):
    """The dataset on disk does not match its split lists (missing videos, wrong root)."""


def _check(dataset, split=1, subset="train"):
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; expected one of {DATASETS} (or folder_dataset for your own).")
    if split not in SPLITS:
        raise ValueError(f"`split` must be 1, 2 or 3 (the official splits); received {split!r}.")
    if subset not in SUBSETS:
        raise ValueError(f"`subset` must be 'train' or 'test'; received {subset!r}.")


def find_splits_dir(dataset, root=None, splits_dir=None):
    """The folder of the official split files: `splits_dir`, else `root/<folder>` or
    `root/../<folder>` (ucfTrainTestlist, testTrainMulti_7030_splits)."""
    if splits_dir is not None:
        path = pathlib.Path(splits_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"Split folder {str(path)!r} does not exist.")
        return path
    folder = SPLITS_FOLDER[dataset]
    candidates = [] if root is None else [pathlib.Path(root).expanduser() / folder,
                                          pathlib.Path(root).expanduser().parent / folder]
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"Cannot find the {dataset} split files: looked for {[str(c) for c in candidates] or folder}. "
        f"Unpack the official split archive ({folder}) next to the videos or pass splits_dir=."
    )


def _lines(path):
    """Non-empty lines without CR/LF and surrounding spaces (the files use CRLF or LF)."""
    return [line.strip() for line in pathlib.Path(path).read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def class_names(dataset, splits_dir=None, root=None):
    """The class names of `dataset` in label order (index = 0-based label)."""
    _check(dataset)
    folder = find_splits_dir(dataset, root, splits_dir)
    if dataset == "ucf101":
        pairs = [line.split() for line in _lines(folder / "classInd.txt")]
        numbered = sorted((int(number), name) for number, name in pairs)
        if [n for n, _ in numbered] != list(range(1, len(numbered) + 1)):
            raise DatasetError(f"{folder / 'classInd.txt'} does not number its classes 1..{len(numbered)}.")
        return [name for _, name in numbered]
    names = sorted(p.name[: -len("_test_split1.txt")] for p in folder.glob("*_test_split1.txt"))
    if not names:
        raise DatasetError(f"No HMDB51 split file (<class>_test_split1.txt) in {folder}.")
    return names


def _listed(dataset, folder, split, subset, names):
    """`[(relative path, label)]` of one official list."""
    if dataset == "ucf101":
        label_of = {name.lower(): i for i, name in enumerate(names)}
        listing = folder / f"{subset}list0{split}.txt"
        videos = []
        for line in _lines(listing):
            relative = line.split()[0]
            class_folder = relative.split("/")[0]
            if class_folder.lower() not in label_of:
                raise DatasetError(f"{listing}: unknown class folder {class_folder!r} in {line!r}.")
            videos.append((relative, label_of[class_folder.lower()]))
        return videos
    wanted = {"train": "1", "test": "2"}[subset]
    videos = []
    for label, name in enumerate(names):
        for line in _lines(folder / f"{name}_test_split{split}.txt"):
            video, tag = line.split()
            if tag == wanted:
                videos.append((f"{name}/{video}", label))
    return videos


def load_split(dataset, root, split=1, subset="train", splits_dir=None, check_files=True, on_missing="error"):
    """The videos of an official split: `[(video_path, label)]`, 0-based labels.

    Args:
        dataset: "ucf101" or "hmdb51".
        root: the folder of the videos (`root/<class>/<file>.avi`).
        split: 1, 2 or 3.
        subset: "train" or "test".
        splits_dir: the official split files; default `root/<folder>` or
            `root/../<folder>` (ucfTrainTestlist, testTrainMulti_7030_splits).
        check_files: compare with the files under `root`: missing videos raise a
            `DatasetError` naming them (or, with `on_missing="skip"`, are dropped
            with a warning); videos on disk in no list of the split are reported.
        on_missing: "error" or "skip".

    Example:
    >>> videos = load_split("ucf101", "/data/UCF-101", split=1, subset="test")  # doctest: +SKIP
    >>> len(videos), videos[0]  # doctest: +SKIP
    (3783, (PosixPath('/data/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi'), 0))
    """
    _check(dataset, split, subset)
    if on_missing not in ("error", "skip"):
        raise ValueError(f"`on_missing` must be 'error' or 'skip'; received {on_missing!r}.")
    root = pathlib.Path(root).expanduser()
    folder = find_splits_dir(dataset, root, splits_dir)
    names = class_names(dataset, folder)
    videos = [(root / relative, label) for relative, label in _listed(dataset, folder, split, subset, names)]
    if not check_files:
        return videos
    if not root.is_dir():
        raise DatasetError(f"Video folder {str(root)!r} does not exist; pass the folder holding the class folders.")
    missing = [path for path, _ in videos if not path.is_file()]
    if missing:
        report = _report(f"{len(missing)} of the {len(videos)} {dataset} split-{split} {subset} videos are "
                         f"missing under {root}", missing)
        if on_missing == "error" or len(missing) == len(videos):
            raise DatasetError(report + "\nIs `root` the folder holding the class folders, and is the "
                                        "archive fully extracted? on_missing='skip' trains on the rest.")
        log.warning("%s\nThey are skipped.", report)
        missing = set(missing)
        videos = [(p, label) for p, label in videos if p not in missing]
    listed = {root / relative for s in SUBSETS for relative, _ in _listed(dataset, folder, split, s, names)}
    if dataset == "hmdb51":  # tag-0 videos are listed too, just unused
        listed |= {root / name / line.split()[0] for name in names
                   for line in _lines(folder / f"{name}_test_split{split}.txt")}
    extra = sorted(p for p in root.glob("*/*") if p.suffix.lower() in VIDEO_EXTENSIONS and p not in listed)
    if extra:
        log.warning("%s", _report(f"{len(extra)} videos under {root} are in no list of {dataset} split {split} "
                                  "(not used)", extra))
    return videos


def _report(title, paths, limit=5):
    shown = "\n".join(f"  {p}" for p in paths[:limit])
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"{title}:\n{shown}{more}"


def folder_dataset(root, extensions=VIDEO_EXTENSIONS, classes=None):
    """Your own clips, a folder per class: `([(video_path, label)], class_names)`.

    Args:
        root: folder holding one sub-folder of videos per class.
        extensions: video file suffixes to take.
        classes: class names in label order; default: the sorted sub-folder names.
    """
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset folder {str(root)!r} does not exist.")
    names = list(classes) if classes is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise DatasetError(f"{root} holds no class folder; expected root/<class>/<video>.")
    videos, empty = [], []
    for label, name in enumerate(names):
        files = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in extensions)
        if not files:
            empty.append(name)
        videos += [(path, label) for path in files]
    if empty:
        raise DatasetError(f"These class folders of {root} hold no video ({', '.join(extensions)}): {empty}.")
    return videos, names
