"""tfds data sets through ``tfds.data_source`` (array_record, random access, no TensorFlow).

``tensorflow_datasets`` is imported inside these functions only, so runs on npz or digits data
never import it. An unprepared data set or a bad data_dir is a :class:`DataError` that says how to
prepare it; nothing is ever downloaded.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from dnjax import storage
from dnjax.data.base import DataError, Split, as_labels

log = logging.getLogger("dnjax")

_TFDS_READ_CHUNK = 1024

# --------------------------------------------------------------------------------------------
# tfds data sets (tfds.data_source: array_record, random access, no TensorFlow)


def _prepare_instructions(name: str, root: str) -> str:
    extra = {"svhn_cropped": " scipy"}.get(name, "")
    lines = [
        "Prepare it once, on a machine with network access (preparing needs TensorFlow, "
        "training does not):",
        f"    pip install tensorflow-cpu importlib_resources{extra}",
    ]
    if name == "imagenet2012":
        lines += [
            "    # ImageNet cannot be downloaded by tfds: put ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar in MANUAL_DIR first",
            f"    tfds build {name} --file_format=array_record --data_dir={root} "
            "--manual_dir=MANUAL_DIR",
        ]
    else:
        lines.append(f"    tfds build {name} --file_format=array_record --data_dir={root}")
    lines.append(
        f"then copy {os.path.join(root, name)} to the same place on the training machines "
        "(or point data.data_dir at the directory that holds it)."
    )
    return "\n".join(lines)


def remote_data_dir_message(path: str) -> str:
    """Why a tfds data_dir in a bucket is refused, and what to do instead."""
    # tfds finds the data set through etils.epath, but array_record's reader (C++) opens local
    # files only: on a bucket it never returns.
    return (f"data.data_dir={path}: tfds data sources read array_record files, whose reader opens local "
            f"files only. Copy the prepared data set to each host's disk (gcloud storage cp -r {path} "
            "/data/tfds) and set data.data_dir to that directory; npz files (data.npz_train/npz_test) "
            "can stay in the bucket.")


def _check_data_dir(data_dir) -> None:
    if data_dir is None:
        return
    path = os.fspath(data_dir)
    if storage.is_remote(path):
        raise DataError(remote_data_dir_message(path))
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise DataError(
            f"data.data_dir={path} does not exist. Point it at the tfds data directory that holds "
            "the prepared data set (the directory given as --data_dir to `tfds build`), or leave "
            "it at None for $TFDS_DATA_DIR or ~/tensorflow_datasets."
        )
    if not os.path.isdir(path):
        raise DataError(f"data.data_dir={path} is not a directory.")


def open_tfds_source(name: str, split: str, data_dir=None):
    """``tfds.data_source(name, split=split)``, or a :class:`DataError` that says how to prepare it.

    Never downloads or prepares anything: an unprepared data set fails at once.
    """
    import tensorflow_datasets as tfds

    _check_data_dir(data_dir)
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:
        explained = _tfds_error(name, data_dir, e)
        if explained is e:
            raise
        raise explained from e


def _tfds_error(name: str, data_dir, error: Exception) -> Exception:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        version_dir = os.fspath(builder.data_dir)
        root = os.fspath(builder.data_dir_root)
        prepared = builder.is_prepared()
        file_format = builder.info.file_format
        alternatives = list(getattr(builder.info, "alternative_file_formats", []) or [])
    except Exception:  # the builder itself is unusable: report the original error
        return error
    looked = f"data.data_dir={data_dir}" if data_dir is not None else (
        f"tfds's default data dir {root} (data.data_dir is None: $TFDS_DATA_DIR or "
        "~/tensorflow_datasets)"
    )
    if not prepared:
        return DataError(
            f"The tfds data set {name!r} is not prepared in {looked} (looked for "
            f"{version_dir}/dataset_info.json).\n"
            "dnjax reads tfds data sets with tfds.data_source, which needs the array_record file "
            "format.\n" + _prepare_instructions(name, root)
        )
    formats = [getattr(f, "value", str(f)) for f in [file_format, *alternatives] if f is not None]
    if "array_record" not in formats and "parquet" not in formats:
        return DataError(
            f"The tfds data set {name!r} in {version_dir} is prepared in the {formats} format only; "
            "dnjax reads it with tfds.data_source, which needs array_record. Convert it in place "
            "(needs TensorFlow: pip install tensorflow-cpu):\n"
            f"    tfds convert_format --dataset_version_dir={version_dir} "
            "--out_file_format=array_record\n"
            "or prepare a fresh copy in another directory:\n"
            + _prepare_instructions(name, "NEW_DATA_DIR")
        )
    return error


def _read_records(source, start: int, stop: int) -> list:
    """Records ``start..stop-1`` of a data source, in chunks through ``__getitems__`` where it works."""
    getitems = getattr(source, "__getitems__", None)
    out: list = []
    for lo in range(start, stop, _TFDS_READ_CHUNK):
        keys = list(range(lo, min(stop, lo + _TFDS_READ_CHUNK)))
        records = None
        if getitems is not None:
            try:
                records = getitems(keys)
            except TypeError:  # a data source without a working batched read
                getitems = None
        if records is None:
            records = [source[k] for k in keys]
        out.extend(records)
    return out


def load_split(name: str, split: str, data_dir, limit: int | None) -> Split:
    source = open_tfds_source(name, split, data_dir)
    n = len(source)
    if limit is not None:
        n = min(n, limit)
    where = f"tfds {name}[{split}]"
    if n == 0:
        return Split(np.zeros((0, 1, 1, 1), np.uint8), np.zeros((0,), np.int32))
    images = None
    labels = np.empty((n,), np.int64)
    for lo in range(0, n, _TFDS_READ_CHUNK):
        hi = min(n, lo + _TFDS_READ_CHUNK)
        try:
            records = _read_records(source, lo, hi)
        except ImportError as e:
            raise DataError(
                f"{where}: decoding the images needs pillow (pip install pillow): {e}"
            ) from e
        for i, record in enumerate(records, start=lo):
            image = np.asarray(record["image"])
            if images is None:
                images = np.empty((n, *image.shape), np.uint8)
            if image.shape != images.shape[1:] or image.dtype != np.uint8:
                raise DataError(
                    f"{where}: example {i} is a {image.dtype} image of shape {image.shape}, the "
                    f"first was uint8 {images.shape[1:]}; in-memory data sets need one fixed shape."
                )
            images[i] = image
            labels[i] = int(record["label"])
    log.info("read %d examples of %s", n, where)
    return Split(images=images, labels=as_labels(labels, where))

