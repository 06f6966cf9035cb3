"""The official UCF101 and HMDB51 splits, parsed as distributed, and folder-per-class data.

Layout (how the official archives unpack):

- UCF101: videos `UCF-101/<Class>/v_<Class>_gXX_cYY.avi`; split files `ucfTrainTestlist/`:
  `classInd.txt` (`<number> <Class>`, numbered from 1), `trainlist0k.txt`
  (`<Class>/<file>.avi <number>`) and `testlist0k.txt` (`<Class>/<file>.avi`, no number).
  The files have CRLF line endings. The folder `HandstandPushups` holds files named
  `v_HandStandPushups_*`, so a video's class comes from its folder (compared without case),
  never from its file name, and the number a train line carries must agree with it.
- HMDB51: `hmdb51_org.rar` holds one `.rar` per class; extracted, `<root>/<class>/<name>.avi`.
  Split files `testTrainMulti_7030_splits/<class>_test_split<k>.txt`, lines `<name>.avi <tag>`
  with tag 1 = train, 2 = test, 0 = not used in split k (70 / 30 / rest per class).

Labels are 0-based. UCF101 uses `classInd.txt` order (number - 1). HMDB51 ships no class
index; its classes are numbered in sorted name order, as mmaction2 does
(`tools/data/parse_file_list.py`: `sorted(os.listdir(...))`, its `label_map_hmdb51.txt`).
The TSN lists' `class_list.txt` differs: it swaps kick/kick_ball (20, 21) and
sword/sword_exercise (44, 45), so a TSN-trained HMDB51 head needs those rows swapped.

`splits_dir=None` searches `root/<folder>`, then `root/../<folder>` (`<folder>` is
`ucfTrainTestlist` or `testTrainMulti_7030_splits`); a given `splits_dir` may be that
folder or the folder holding it.

Missing and extra videos (`check_files=True`): a listed video that is not on disk is an
error by default (`DatasetError`, with the `SplitReport`: counts, the first paths, and what
to check); `on_missing="skip"` drops them with a warning instead. A video on disk that no
list of the split names is reported in a warning only. `check_split` returns the report
without raising. Lines are parsed as written:
CRLF or LF, surrounding whitespace and blank lines ignored.
"""

import dataclasses
import logging
import os
import pathlib

log = logging.getLogger("keras_r21d")

DATASETS = ("ucf101", "hmdb51")
SUBSETS = ("train", "test")
SPLITS = (1, 2, 3)
SPLITS_FOLDER = {"ucf101": "ucfTrainTestlist", "hmdb51": "testTrainMulti_7030_splits"}
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")
_MARKER = {"ucf101": "classInd.txt", "hmdb51": "*_test_split[123].txt"}  # what marks a split folder
_TAGS = {"1": "train", "2": "test", "0": None}  # HMDB51

# The official class orders (label = index), checked against the split files by the tests.
_UCF101_CLASSES = """
ApplyEyeMakeup ApplyLipstick Archery BabyCrawling BalanceBeam BandMarching BaseballPitch
Basketball BasketballDunk BenchPress Biking Billiards BlowDryHair BlowingCandles
BodyWeightSquats Bowling BoxingPunchingBag BoxingSpeedBag BreastStroke BrushingTeeth
CleanAndJerk CliffDiving CricketBowling CricketShot CuttingInKitchen Diving Drumming Fencing
FieldHockeyPenalty FloorGymnastics FrisbeeCatch FrontCrawl GolfSwing Haircut Hammering
HammerThrow HandstandPushups HandstandWalking HeadMassage HighJump HorseRace HorseRiding
HulaHoop IceDancing JavelinThrow JugglingBalls JumpingJack JumpRope Kayaking Knitting LongJump
Lunges MilitaryParade Mixing MoppingFloor Nunchucks ParallelBars PizzaTossing PlayingCello
PlayingDaf PlayingDhol PlayingFlute PlayingGuitar PlayingPiano PlayingSitar PlayingTabla
PlayingViolin PoleVault PommelHorse PullUps Punch PushUps Rafting RockClimbingIndoor
RopeClimbing Rowing SalsaSpin ShavingBeard Shotput SkateBoarding Skiing Skijet SkyDiving
SoccerJuggling SoccerPenalty StillRings SumoWrestling Surfing Swing TableTennisShot TaiChi
TennisSwing ThrowDiscus TrampolineJumping Typing UnevenBars VolleyballSpiking WalkingWithDog
WallPushups WritingOnBoard YoYo
"""
_HMDB51_CLASSES = """
brush_hair cartwheel catch chew clap climb climb_stairs dive draw_sword dribble drink eat
fall_floor fencing flic_flac golf handstand hit hug jump kick kick_ball kiss laugh pick pour
pullup punch push pushup ride_bike ride_horse run shake_hands shoot_ball shoot_bow shoot_gun sit
situp smile smoke somersault stand swing_baseball sword sword_exercise talk throw turn walk wave
"""
OFFICIAL_CLASSES = {"ucf101": tuple(_UCF101_CLASSES.split()), "hmdb51": tuple(_HMDB51_CLASSES.split())}


class DatasetError(ValueError):
    """The split files or the videos on disk are not what a dataset needs.

    `report` holds the `SplitReport` when the error comes from comparing a split with the disk.
    """

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class SplitReport:
    """One split list compared with the videos under `root`.

    Attributes:
        dataset, split, subset, root: what was compared.
        listed: number of videos in the list.
        missing: listed videos not on disk (paths where they were expected).
        extra: videos on disk under `root/<class>/` that no list of the split names (unused).
        hints: what to check, when something is missing.
    """

    dataset: str
    split: int
    subset: str
    root: pathlib.Path
    listed: int
    missing: list = dataclasses.field(default_factory=list)
    extra: list = dataclasses.field(default_factory=list)
    hints: list = dataclasses.field(default_factory=list)

    @property
    def ok(self):
        """True when every listed video is on disk and none is extra."""
        return not self.missing and not self.extra

    def __str__(self):
        counts = f"{self.listed} listed, {len(self.missing)} missing, {len(self.extra)} extra."
        lines = [f"{self.dataset} split {self.split} {self.subset} under {self.root}: {counts}"]
        if self.missing:
            lines += _first(f"Missing (listed, not on disk): {len(self.missing)}", self.missing)
        if self.extra:
            lines += _first(f"Extra (on disk, in no list of split {self.split}; not used): {len(self.extra)}",
                            self.extra)
        return "\n".join(lines + self.hints)


def _first(title, paths, limit=5):
    """`title` and the first `limit` paths, one per line."""
    more = [f"  ... and {len(paths) - limit} more"] if len(paths) > limit else []
    return [title] + [f"  {p}" for p in paths[:limit]] + more


def _check(dataset, split=1, subset="train"):
    """Raises a ValueError naming the bad argument, what was received and what is expected."""
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; expected one of {DATASETS} "
                         "(folder_dataset reads your own folder-per-class videos).")
    if split not in SPLITS:
        raise ValueError(f"`split` must be 1, 2 or 3 (the official splits); received {split!r}.")
    if subset not in SUBSETS:
        raise ValueError(f"`subset` must be 'train' or 'test'; received {subset!r}.")


def find_splits_dir(dataset, root=None, splits_dir=None):
    """The folder of `dataset`'s official split files.

    `splits_dir` when given (the split folder itself or the folder holding it), else the
    first of `root/<folder>` and `root/../<folder>` that holds the split files, where
    `<folder>` is `ucfTrainTestlist` (UCF101) or `testTrainMulti_7030_splits` (HMDB51).
    Raises FileNotFoundError naming the places looked at.
    """
    folder = SPLITS_FOLDER[dataset]
    expected = f"the {dataset} split files ({_MARKER[dataset]}, as in the official {folder}/)"
    if splits_dir is not None:
        path = pathlib.Path(splits_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"splits_dir {str(path)!r} does not exist; expected the folder of {expected}.")
        candidates = [path, path / folder]
    elif root is not None:
        root = pathlib.Path(root).expanduser()
        candidates = [root / folder, root.parent / folder]
    else:
        raise FileNotFoundError(f"No splits_dir and no root given: pass splits_dir=, the folder of {expected}.")
    for path in candidates:
        if any(path.glob(_MARKER[dataset])):
            return path
    raise FileNotFoundError(f"Cannot find {expected}: looked in {[str(p) for p in candidates]}. "
                            f"Unpack the official split archive next to the videos or pass splits_dir=.")


def _lines(path):
    """`[(line number, text)]` of the non-blank lines, stripped (CRLF or LF, a BOM tolerated)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"Split file {path} is missing; is the split archive fully extracted?")
    text = path.read_text(encoding="utf-8-sig")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _read_class_names(dataset, folder):
    """Class names in label order from a split folder (see the module docstring)."""
    if dataset == "ucf101":
        path = folder / "classInd.txt"
        rows = [line.split() for _, line in _lines(path)]
        if any(len(row) != 2 or not row[0].isdigit() for row in rows):
            raise DatasetError(f"{path}: expected lines '<number> <Class>'.")
        numbered = sorted((int(number), name) for number, name in rows)
        if [number for number, _ in numbered] != list(range(1, len(numbered) + 1)):
            raise DatasetError(f"{path} does not number its classes 1..{len(numbered)}.")
        return [name for _, name in numbered]
    return sorted({p.name.rsplit("_test_split", 1)[0] for p in folder.glob(_MARKER[dataset])})


def class_names(dataset, splits_dir=None):
    """The class names of `dataset` in label order (name of label i = `class_names(...)[i]`).

    Args:
        dataset: "ucf101" or "hmdb51".
        splits_dir: read them from these split files; default: the official order
            (`OFFICIAL_CLASSES`), which the official files give.
    """
    _check(dataset)
    if splits_dir is None:
        return list(OFFICIAL_CLASSES[dataset])
    return _read_class_names(dataset, find_splits_dir(dataset, splits_dir=splits_dir))


def _entries(dataset, folder, split, names):
    """Everything split `split` lists: `[(relative path, label, subset)]`, subset None for
    HMDB51's tag 0 (listed, not used)."""
    entries = []
    if dataset == "ucf101":
        label_of = {name.lower(): i for i, name in enumerate(names)}  # folder case may vary
        for subset in SUBSETS:
            path = folder / f"{subset}list0{split}.txt"
            for n, line in _lines(path):
                fields = line.split()
                label = label_of.get(fields[0].split("/")[0].lower())
                if label is None or "/" not in fields[0] or len(fields) > 2:
                    raise DatasetError(f"{path}, line {n}: expected '<Class>/<file>.avi [<number>]' with a "
                                       f"class of classInd.txt; found {line!r}.")
                if len(fields) == 2 and (not fields[1].isdigit() or int(fields[1]) != label + 1):
                    raise DatasetError(f"{path}, line {n}: {line!r} is numbered {fields[1]} but classInd.txt "
                                       f"numbers {names[label]} {label + 1}.")
                entries.append((fields[0], label, subset))
        return entries
    for label, name in enumerate(names):
        path = folder / f"{name}_test_split{split}.txt"
        for n, line in _lines(path):
            fields = line.rsplit(None, 1)
            if len(fields) != 2 or fields[1] not in _TAGS:
                raise DatasetError(f"{path}, line {n}: expected '<name>.avi <tag>' with tag 0, 1 or 2; "
                                   f"found {line!r}.")
            entries.append((f"{name}/{fields[0]}", label, _TAGS[fields[1]]))
    return entries


def _split_entries(dataset, root, split, splits_dir):
    """`_entries` of split `split`, from `splits_dir` or the folder found from `root`."""
    folder = find_splits_dir(dataset, root, splits_dir)
    return _entries(dataset, folder, split, _read_class_names(dataset, folder))


def _hints(dataset, root, wanted, missing):
    """What to check when listed videos are missing."""
    hints = []
    if len(missing) == len(wanted):
        hints.append(f"None of the listed videos is under {root}: is `root` the folder holding the class "
                     f"folders (root/<class>/<video>)?")
        first_class = wanted[0][0].split("/")[0]
        hints += [f"{p.parent} holds the class folder {first_class}/: did you mean root={str(p.parent)!r}?"
                  for p in sorted(root.glob(f"*/{first_class}")) if p.is_dir()]
    archives = sorted(p.name for p in root.glob("*.rar"))
    if dataset == "hmdb51" and archives:
        hints.append(f"{root} holds {', '.join(archives[:3])}{', ...' if len(archives) > 3 else ''}: "
                     f"hmdb51_org.rar contains one .rar per class; extract each into root/<class>/.")
    skip = "" if len(missing) == len(wanted) else " on_missing='skip' uses only the videos found."
    hints.append(f"Is the download complete and fully extracted?{skip}")
    return hints


def _compared(dataset, root, split, subset, splits_dir):
    """`([(path on disk, label)] of the videos found, SplitReport)` for one split list."""
    _check(dataset, split, subset)
    root = pathlib.Path(root).expanduser()
    entries = _split_entries(dataset, root, split, splits_dir)
    if not root.is_dir():
        raise DatasetError(f"Video folder {str(root)!r} does not exist; pass the folder holding the class folders.")
    on_disk = {p.relative_to(root).as_posix(): p for p in root.glob("*/*")
               if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()}
    folded = {relative.lower(): p for relative, p in on_disk.items()}  # e.g. HandStandPushups/ on disk
    wanted = [(relative, label) for relative, label, s in entries if s == subset]
    found = [(on_disk.get(relative) or folded.get(relative.lower()), label) for relative, label in wanted]
    missing = [root / relative for (relative, _), (path, _) in zip(wanted, found) if path is None]
    listed = {relative.lower() for relative, _, _ in entries}
    extra = sorted(p for relative, p in on_disk.items() if relative.lower() not in listed)
    report = SplitReport(dataset, split, subset, root, len(wanted), missing, extra,
                         _hints(dataset, root, wanted, missing) if missing else [])
    return [(path, label) for path, label in found if path is not None], report


def check_split(dataset, root, split=1, subset="train", splits_dir=None):
    """Compares an official split list with the videos under `root`; returns a `SplitReport`.

    Arguments as for `load_split`. Missing and extra videos are reported, not raised.
    """
    return _compared(dataset, root, split, subset, splits_dir)[1]


def load_split(dataset, root, split=1, subset="train", splits_dir=None, check_files=True, on_missing="error"):
    """The videos of an official split: `[(video_path, label)]`, 0-based labels.

    Args:
        dataset: "ucf101" or "hmdb51".
        root: the folder of the class folders (`root/<class>/<file>.avi`).
        split: 1, 2 or 3.
        subset: "train" or "test".
        splits_dir: the official split files; default: `root/<folder>`, then
            `root/../<folder>` (`ucfTrainTestlist`, `testTrainMulti_7030_splits`).
        check_files: compare the list with the videos under `root` (paths then have the
            spelling on disk, matched without case where it differs). Missing videos raise
            a `DatasetError` listing them; extra videos (in no list of the split) are
            logged as a warning. With False, the paths are `root / <listed path>`, unchecked.
        on_missing: "error" (default) or "skip": drop missing videos with a warning
            (still an error when none is found).

    Example:
    >>> videos = load_split("ucf101", "/data/UCF-101", split=1, subset="test")  # doctest: +SKIP
    >>> len(videos), videos[0]  # doctest: +SKIP
    (3783, (PosixPath('/data/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi'), 0))
    """
    _check(dataset, split, subset)
    if on_missing not in ("error", "skip"):
        raise ValueError(f"`on_missing` must be 'error' or 'skip'; received {on_missing!r}.")
    if not check_files:
        root = pathlib.Path(root).expanduser()
        entries = _split_entries(dataset, root, split, splits_dir)
        return [(root / relative, label) for relative, label, s in entries if s == subset]
    videos, report = _compared(dataset, root, split, subset, splits_dir)
    if report.missing and (on_missing == "error" or not videos):
        raise DatasetError(str(report), report)
    if not report.ok:
        log.warning("%s%s", report, "\nSkipping the missing videos (on_missing='skip')." if report.missing else "")
    return videos


def folder_dataset(root, extensions=VIDEO_EXTENSIONS, classes=None):
    """Your own clips, a folder per class: `([(video_path, label)], class_names)`.

    Takes the files directly inside `root/<class>/` whose suffix is in `extensions`
    (compared without case), sorted by name.

    Args:
        root: folder holding one sub-folder of videos per class.
        extensions: video file suffixes to take.
        classes: class names in label order; default: the sorted sub-folder names
            (hidden folders such as `.ipynb_checkpoints` left out).

    Raises:
        DatasetError: no class folder, a class folder missing or without videos.
    """
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset folder {str(root)!r} does not exist.")
    names = list(classes) if classes is not None else sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DatasetError(f"{root} holds no class folder; expected root/<class>/<video>.")
    absent = [name for name in names if not (root / name).is_dir()]
    if absent:
        raise DatasetError(f"Class folders missing under {root}: {absent}.")
    suffixes = {e.lower() for e in extensions}
    videos, empty = [], []
    for label, name in enumerate(names):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in suffixes and p.is_file())
        empty += [] if files else [name]
        videos += [(path, label) for path in files]
    if empty:
        raise DatasetError(f"These class folders of {root} hold no video ({', '.join(sorted(suffixes))}): {empty}.")
    return videos, names


def find_videos(paths):
    """The video files among `paths` (files, or folders searched recursively for
    `VIDEO_EXTENSIONS`), in order; FileNotFoundError for a path that does not exist."""
    files = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{str(path)!r} does not exist; pass video files or folders of videos.")
    return files


KINETICS = ("kinetics400", "kinetics600", "kinetics700")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


def find_kinetics_annotations(root, subset="validate"):
    """The annotation CSV of `subset` beside the videos: `validate.csv` (or `val.csv`,
    `test.csv`, `train.csv`, as the official archives name them) in `root`, its parent or
    an `annotations` folder there; FileNotFoundError saying where it looked."""
    root = pathlib.Path(root).expanduser()
    names = {"validate": ("validate.csv", "val.csv"), "train": ("train.csv",), "test": ("test.csv",)}.get(
        subset, (f"{subset}.csv",))
    folders = [root, root / "annotations", root.parent, root.parent / "annotations"]
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(f"No Kinetics annotation file ({' or '.join(names)}) in {', '.join(map(str, folders))}; "
                            "pass it with annotations=... (--annotations).")


def load_kinetics(annotations, root, subset="validate", class_names=None):
    """The videos of a Kinetics annotation file found under `root`:
    `([(video_path, label)], class_names, missing)`.

    Args:
        annotations: an official CSV (`label,youtube_id,time_start,time_end,split`,
            as published for Kinetics-400/600/700); None: `find_kinetics_annotations`.
        root: the videos, in any of the common layouts: a folder per class (its name
            with spaces or underscores) or one flat folder, each file named
            `{youtube_id}_{time_start:06d}_{time_end:06d}.<ext>` or `{youtube_id}.<ext>`;
            found wherever they are under `root`.
        subset: the `split` column's value to keep ("train", "validate", "test").
        class_names: the classes in label order (e.g. those stored with the weights);
            default: the CSV's labels sorted, the usual Kinetics order.

    `missing` lists the annotated clips with no video (downloads fail for a few % of
    Kinetics); they are logged and left out, never fatal unless none is found.
    """
    import csv

    if annotations is None:
        annotations = find_kinetics_annotations(root, subset)
    annotations, root = pathlib.Path(annotations), pathlib.Path(root).expanduser()
    if not annotations.is_file():
        raise FileNotFoundError(f"Kinetics annotations {os.fspath(annotations)!r} do not exist; pass the official "
                                "CSV (e.g. kinetics400/validate.csv).")
    with open(annotations, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        absent = [c for c in KINETICS_COLUMNS if c not in (reader.fieldnames or ())]
        if absent:
            raise ValueError(f"{os.fspath(annotations)!r} lacks the columns {absent}; a Kinetics annotation file "
                             f"has {','.join(KINETICS_COLUMNS)} (it has {reader.fieldnames}).")
        rows = [row for row in reader if row["split"] == subset]
    if not rows:
        raise ValueError(f"{os.fspath(annotations)!r} has no clip of split {subset!r}.")
    names = list(class_names) if class_names is not None else sorted({row["label"] for row in rows})
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({row["label"] for row in rows} - set(index))
    if unknown:
        raise ValueError(f"{len(unknown)} labels of {os.fspath(annotations)!r} are not among the {len(names)} "
                         f"classes: {unknown[:5]}.")
    if not root.is_dir():
        raise FileNotFoundError(f"{os.fspath(root)!r} is not a folder of Kinetics videos.")
    on_disk = {p.stem: p for p in sorted(root.rglob("*")) if p.suffix.lower() in VIDEO_EXTENSIONS}
    videos, missing = [], []
    for row in rows:
        clip = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
        path = on_disk.get(clip) or on_disk.get(row["youtube_id"])
        if path is None:
            missing.append(clip)
        else:
            videos.append((path, index[row["label"]]))
    if missing:
        log.warning("%d of %d annotated %s clips have no video under %s (first: %s); they are left out.",
                    len(missing), len(rows), subset, root, ", ".join(missing[:5]))
    if not videos:
        raise DatasetError(f"None of the {len(rows)} {subset} clips of {os.fspath(annotations)!r} is under "
                           f"{os.fspath(root)!r}: files are named {{youtube_id}}_{{start:06d}}_{{end:06d}}.mp4.")
    return videos, names, missing
