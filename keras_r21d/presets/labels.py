"""Class names: the Kinetics-400 label map and `decode_predictions`.

The Kinetics-400 names come from the I3D release's `data/label_map.txt`
(deepmind/kinetics-i3d, Apache-2.0), the standard sorted index order that
torchvision and mmaction2 also use. Like `keras.applications` does for ImageNet,
the file is downloaded on first use (with `keras_r21d.presets.download`: bounded,
written under a temporary name and renamed once its sha256 matches, under a lock
file, so that concurrent processes never read a half-written map) and cached in the
labels/ folder of the keras_r21d cache (`$KERAS_R21D_CACHE`, default
`~/.keras/keras_r21d`).
"""

import os
import pathlib

import keras
import numpy as np

KINETICS400_URL = (
    "https://raw.githubusercontent.com/deepmind/kinetics-i3d/master/data/label_map.txt"
)
KINETICS400_SHA256 = "e9f2806fe9109b851a80a74841244f6f8c9d10917fa0229cd82bab67f2f8e28f"
KINETICS400_FILENAME = "kinetics400_label_map.txt"
KINETICS400_CLASSES = 400
CACHE_SUBDIR = "labels"


def cache_root(cache_dir=None):
    """The cache root: `cache_dir`, else keras_r21d's cache (`keras_r21d.presets.cache_dir`)."""
    from keras_r21d.presets import cache_dir as default_cache_dir

    return os.path.expanduser(cache_dir or default_cache_dir())


def read_labels(path):
    """Reads class names, one per line, in index order.

    Surrounding whitespace, CRLF line ends, a UTF-8 byte-order mark and empty
    trailing lines are tolerated; an empty line before the last name is an error,
    since it would shift every later index.

    Args:
        path: text file with one class name per line.

    Returns:
        list of str.

    Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "classes.txt"
    >>> _ = path.write_bytes(b"abseiling\\r\\nair drumming\\r\\n\\r\\n")
    >>> read_labels(path)
    ['abseiling', 'air drumming']
    """
    with open(path, encoding="utf-8-sig") as f:
        names = [line.strip() for line in f.read().splitlines()]
    while names and not names[-1]:
        names.pop()
    if "" in names:
        raise ValueError(
            f"Empty class name on line {names.index('') + 1} of {os.fspath(path)}; "
            "expected one name per line."
        )
    return names


def kinetics400_labels(cache_dir=None, url=None):
    """The 400 Kinetics-400 class names in index order.

    Downloaded from `url` (default `KINETICS400_URL`) on first use, checked
    against `KINETICS400_SHA256`, then read from the cache. A failed or corrupt
    download leaves nothing in the cache and raises an error that says where to
    put the file by hand.

    Args:
        cache_dir: cache root; the file goes to `<cache_dir>/labels/`.
            Defaults to `$KERAS_R21D_CACHE`, else `~/.keras/keras_r21d`.
        url: where to download the label map from.

    Returns:
        list of 400 str.

    Example:
    >>> names = kinetics400_labels()  # doctest: +SKIP
    >>> names[0], len(names)  # doctest: +SKIP
    ('abseiling', 400)
    """
    from keras_r21d.fileio import sha256_of
    from keras_r21d.presets import _locked, download

    url = url or KINETICS400_URL
    path = pathlib.Path(cache_root(cache_dir)) / CACHE_SUBDIR / KINETICS400_FILENAME

    def cached():
        return path.is_file() and sha256_of(path) == KINETICS400_SHA256

    try:
        if not cached():  # a good cached file is read without a lock: it was renamed in whole
            with _locked(path):
                if not cached():  # not downloaded by another process meanwhile
                    download(url, path, sha256=KINETICS400_SHA256)
    except OSError as error:  # DownloadError, or an unwritable cache
        raise RuntimeError(
            f"Could not get the Kinetics-400 label map from {url}: {error}\n"
            f"Download {KINETICS400_URL} by hand (sha256 {KINETICS400_SHA256}) and save "
            f"it as {path}, or point $KERAS_R21D_CACHE at a folder holding "
            f"{CACHE_SUBDIR}/{KINETICS400_FILENAME}."
        ) from error
    names = read_labels(path)
    if len(names) != KINETICS400_CLASSES:
        raise ValueError(
            f"{path} holds {len(names)} class names; expected {KINETICS400_CLASSES}."
        )
    return names


def decode_predictions(preds, top=5, labels=None):
    """Turns class scores into the `top` most likely `(index, name, score)` per clip.

    Like `keras.applications.*.decode_predictions`, for video classifiers.

    Args:
        preds: scores (usually probabilities) of shape `(batch, classes)`; NumPy
            array or backend tensor.
        top: how many classes to return per clip (at most `classes`).
        labels: list of the class names in index order, e.g. those stored with the
            weights or read with `read_labels`. With None, 400 classes are taken as
            Kinetics-400 and named by `kinetics400_labels()`.

    Returns:
        one list per clip of `(class_index, class_name, score)` tuples, highest
        score first (ties: lower index first).

    Example:
    >>> decode_predictions([[0.1, 0.7, 0.2]], top=2, labels=["a", "b", "c"])
    [[(1, 'b', 0.7), (2, 'c', 0.2)]]
    """
    if not isinstance(preds, (list, tuple, np.ndarray)):
        preds = keras.ops.convert_to_numpy(preds)  # backend tensors, also on GPU
    preds = np.asarray(preds)
    if preds.ndim != 2:
        raise ValueError(
            f"`preds` must have shape (batch, classes); received shape {preds.shape}."
        )
    classes = preds.shape[1]
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"`top` must be a positive int; received {top!r}.")
    if labels is None:
        if classes != KINETICS400_CLASSES:
            raise ValueError(
                f"`preds` has {classes} classes, so they are not Kinetics-400 (400 "
                f"classes): pass `labels=`, the list of the {classes} class names in index "
                "order (e.g. stored with the weights or read with "
                "keras_r21d.presets.labels.read_labels)."
            )
        labels = kinetics400_labels()
    labels = list(labels)
    if len(labels) != classes:
        raise ValueError(
            f"`labels` has {len(labels)} names but `preds` has shape {preds.shape}, "
            f"i.e. {classes} classes; expected one name per class."
        )
    results = []
    for scores in preds:
        order = np.argsort(-scores, kind="stable")[:top]
        results.append([(int(i), labels[i], float(scores[i])) for i in order])
    return results
