"""The input pipeline: loading and validating data sets, augmentation, and the order of examples."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dnjax import data as ip
from dnjax.data import order

CIFAR10_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10"


def data_config(**fields) -> ip.DataSpec:
    """The data spec of configs/default.py on the bundled digits, with ``fields`` changed."""
    from configs import default

    return dataclasses.replace(ip.DataSpec.of(default.get_config().data), **{"dataset": "digits", **fields})


def run_config(**data_fields) -> ml_collections.ConfigDict:
    """A run's config (densenet_tiny) with these data fields set exactly as given (not cast to the
    field's type): what ``config_lib.validate`` sees before any data is read."""
    from configs import default

    c = default.get_config("densenet_tiny")
    with c.unlocked():
        for field, value in data_fields.items():
            del c.data[field]
            c.data[field] = value
    return c


def refused(config, field: str, pattern: str | None = None) -> None:
    """``config_lib.validate`` refuses the config with a ConfigError that names ``config.data.<field>``
    with its value (or matches ``pattern``)."""
    from dnjax import config_lib

    if pattern is None:
        pattern = re.escape(f"config.data.{field}={config.data[field]!r} is invalid: ")
    with pytest.raises(config_lib.ConfigError, match=pattern):
        config_lib.validate(config)


def write_npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def npz_config(tmp_path: Path, train: dict, test: dict | None = None, **overrides):
    rng = np.random.default_rng(0)
    if test is None:
        test = {
            "image": rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8),
            "label": np.arange(6) % 3,
        }
    return data_config(
        dataset="npz",
        npz_train=write_npz(tmp_path / "train.npz", **train),
        npz_test=write_npz(tmp_path / "test.npz", **test),
        **overrides,
    )


def good_train(n: int = 8) -> dict:
    rng = np.random.default_rng(1)
    return {
        "image": rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8),
        "label": np.arange(n) % 3,
    }


# --------------------------------------------------------------------------------------------
# digits


def test_digits_loads_stratified_and_deterministic():
    train, test, info = ip.load_in_memory(data_config())
    assert train.images.dtype == np.uint8 and test.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and test.labels.dtype == np.int32
    assert train.images.shape[1:] == test.images.shape[1:] == (8, 8, 1)
    assert len(train) + len(test) == 1797
    assert len(test) == 360 and len(train) == 1437
    assert info.num_classes == 10 and info.image_shape == (8, 8, 1)
    assert (info.num_train, info.num_test) == (1437, 360)
    assert train.images.max() == 255 and train.images.min() == 0
    np.testing.assert_allclose(info.mean, [train.images.mean()], rtol=1e-6)
    np.testing.assert_allclose(info.std, [train.images.std()], rtol=1e-6)

    train_counts = np.bincount(train.labels, minlength=10)
    test_counts = np.bincount(test.labels, minlength=10)
    fraction = test_counts / (train_counts + test_counts)
    assert np.all(np.abs(fraction - 0.2) < 0.01), fraction

    train2, test2, info2 = ip.load_in_memory(data_config())
    np.testing.assert_array_equal(train.images, train2.images)
    np.testing.assert_array_equal(test.labels, test2.labels)
    assert info == info2


def test_digits_scale_normalisation_and_limits():
    train, test, info = ip.load_in_memory(
        data_config(normalization="scale", train_limit=100, test_limit=30)
    )
    assert (len(train), len(test)) == (100, 30)
    assert (info.num_train, info.num_test) == (100, 30)
    assert info.mean == (0.0,) and info.std == (255.0,)


# --------------------------------------------------------------------------------------------
# npz (the real CIFAR-10 sample)


def test_npz_cifar10_sample():
    train_path, test_path = CIFAR10_SAMPLE / "train_10k.npz", CIFAR10_SAMPLE / "test_10k.npz"
    if not (train_path.exists() and test_path.exists()):
        pytest.skip(f"the CIFAR-10 sample is not at {CIFAR10_SAMPLE.resolve()}")
    train, test, info = ip.load_in_memory(
        data_config(dataset="npz", npz_train=str(train_path), npz_test=str(test_path))
    )
    assert info.num_classes == 10
    assert info.image_shape == (32, 32, 3)
    assert train.images.shape == (10_000, 32, 32, 3) and test.images.shape == (10_000, 32, 32, 3)
    assert train.labels.dtype == np.int32 and train.images.dtype == np.uint8
    np.testing.assert_allclose(info.mean, (125.3, 122.9, 113.9), atol=1.0)
    assert all(55.0 < s < 75.0 for s in info.std)
    np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 1000))

    _, _, small = ip.load_in_memory(
        data_config(
            dataset="npz", npz_train=str(train_path), npz_test=str(test_path),
            train_limit=500, test_limit=200, normalization="scale",
        )
    )
    assert (small.num_train, small.num_test) == (500, 200)
    assert small.mean == (0.0, 0.0, 0.0) and small.std == (255.0, 255.0, 255.0)


# --------------------------------------------------------------------------------------------
# tfds


def write_array_record_dataset(data_dir: Path, name: str, sizes: dict[str, int], file_format="array_record"):
    """Prepares ``name`` in ``data_dir`` the way `tfds build` lays it out, from random images."""
    import PIL.Image
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(data_dir), file_format=file_format)
    out = Path(builder.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    features = builder.info.features
    num_classes = features["label"].num_classes
    rng = np.random.default_rng(0)
    written = {}
    for split, n in sizes.items():
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, num_classes, n)
        written[split] = (images, labels)
        if file_format == "array_record":
            from array_record.python.array_record_module import ArrayRecordWriter

            writer = ArrayRecordWriter(
                str(out / f"{name}-{split}.array_record-00000-of-00001"), "group_size:1"
            )
            for i in range(n):
                example = {"id": f"{split}_{i}", "image": PIL.Image.fromarray(images[i]), "label": int(labels[i])}
                if "coarse_label" in features:
                    example["coarse_label"] = int(labels[i]) // 5
                writer.write(features.serialize_example(example))
            writer.close()
    builder.info.set_splits(
        tfds.core.SplitDict(
            [tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=None)
             for s, n in sizes.items()]
        )
    )
    builder.info.write_to_directory(out)
    return written


def test_tfds_cifar100_real_data_source(tmp_path):
    written = write_array_record_dataset(tmp_path, "cifar100", {"train": 23, "test": 7})
    train, test, info = ip.load_in_memory(data_config(dataset="cifar100", data_dir=str(tmp_path)))
    assert train.images.dtype == np.uint8 and train.images.shape == (23, 32, 32, 3)
    assert test.images.shape == (7, 32, 32, 3)
    assert train.labels.dtype == np.int32 and test.labels.dtype == np.int32
    np.testing.assert_array_equal(train.images, written["train"][0])  # PNG is lossless
    np.testing.assert_array_equal(train.labels, written["train"][1])
    np.testing.assert_array_equal(test.labels, written["test"][1])
    assert info.num_classes == 100
    assert info.mean == (129.3, 124.1, 112.4) and info.std == (68.2, 65.4, 70.4)

    train, test, info = ip.load_in_memory(
        data_config(dataset="cifar100", data_dir=str(tmp_path), train_limit=5, test_limit=3)
    )
    assert (len(train), len(test), info.num_train, info.num_test) == (5, 3, 5, 3)


def test_tfds_cifar100_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=40):
        train, test, info = ip.load_in_memory(data_config(dataset="cifar100"))
    assert train.images.dtype == np.uint8 and train.images.shape == (40, 32, 32, 3)
    assert test.images.shape == (40, 32, 32, 3)
    assert train.labels.dtype == np.int32
    assert 0 <= train.labels.min() and train.labels.max() < 100
    assert info.num_classes == 100 and info.image_shape == (32, 32, 3)
    assert info.mean == (129.3, 124.1, 112.4) and info.std == (68.2, 65.4, 70.4)


def test_tfds_cifar10_constants_and_num_classes_mismatch():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=10):
        _, _, info = ip.load_in_memory(data_config(dataset="cifar10"))
        assert info.num_classes == 10
        assert info.mean == (125.3, 123.0, 113.9) and info.std == (63.0, 62.1, 66.7)
        with pytest.raises(ip.DataError, match="num_classes=7"):
            ip.load_in_memory(data_config(dataset="cifar10", num_classes=7))


def test_tfds_unprepared_data_set(tmp_path):
    with pytest.raises(ip.DataError) as e:
        ip.load_in_memory(data_config(dataset="cifar100", data_dir=str(tmp_path)))
    message = str(e.value)
    assert f"tfds build cifar100 --file_format=array_record --data_dir={tmp_path}" in message
    assert "pip install tensorflow-cpu" in message
    assert str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


def test_tfds_prepared_as_tfrecord_only(tmp_path):
    write_array_record_dataset(tmp_path, "cifar10", {"train": 3, "test": 3}, file_format="tfrecord")
    with pytest.raises(ip.DataError) as e:
        ip.load_in_memory(data_config(dataset="cifar10", data_dir=str(tmp_path)))
    message = str(e.value)
    assert "tfrecord" in message and "tfds convert_format" in message
    assert str(tmp_path / "cifar10") in message


def test_tfds_missing_data_dir(tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(ip.DataError, match="does not exist") as e:
        ip.load_in_memory(data_config(dataset="cifar10", data_dir=str(missing)))
    assert str(missing) in str(e.value)
    assert not missing.exists()


def test_unknown_dataset_and_normalisation():
    refused(run_config(dataset="mnist"), "dataset", r"config\.data\.dataset='mnist' is invalid")
    refused(run_config(normalization="zca"), "normalization", r"config\.data\.normalization='zca' is invalid")


def test_streamed_data_set_is_not_read_into_memory():
    with pytest.raises(ip.DataError, match="make_imagenet_loader"):
        ip.load_in_memory(data_config(dataset="imagenet2012"))


# --------------------------------------------------------------------------------------------
# validation of npz data


def test_npz_good(tmp_path):
    train, test, info = ip.load_in_memory(npz_config(tmp_path, good_train()))
    assert info.num_classes == 3 and info.image_shape == (4, 4, 3)
    assert train.labels.dtype == np.int32


def test_npz_label_out_of_range(tmp_path):
    bad = good_train()
    bad["label"][5] = 10
    with pytest.raises(ip.DataError, match=r"outside \[0, 10\)") as e:
        ip.load_in_memory(npz_config(tmp_path, bad, num_classes=10))
    assert "train.npz" in str(e.value) and "labels[5] = 10" in str(e.value)

    negative = good_train()
    negative["label"][0] = -1
    with pytest.raises(ip.DataError, match="outside"):
        ip.load_in_memory(npz_config(tmp_path, negative))

    # The test split's labels are checked against the classes taken from the training split.
    test = {"image": good_train()["image"], "label": np.full(8, 3)}
    with pytest.raises(ip.DataError, match=r"test.npz.*outside \[0, 3\)"):
        ip.load_in_memory(npz_config(tmp_path, good_train(), test))


def test_npz_images_not_uint8(tmp_path):
    bad = good_train()
    bad["image"] = bad["image"].astype(np.float32) / 255.0
    with pytest.raises(ip.DataError, match="float32.*uint8"):
        ip.load_in_memory(npz_config(tmp_path, bad))


def test_npz_images_not_rank4(tmp_path):
    bad = good_train()
    bad["image"] = bad["image"][..., 0]
    with pytest.raises(ip.DataError, match=r"rank 4 \[N, H, W, C\].*channel axis"):
        ip.load_in_memory(npz_config(tmp_path, bad))


def test_npz_train_test_shapes_differ(tmp_path):
    test = {"image": np.zeros((4, 5, 5, 3), np.uint8), "label": np.zeros(4, np.int64)}
    with pytest.raises(ip.DataError, match="same image shape"):
        ip.load_in_memory(npz_config(tmp_path, good_train(), test))


def test_npz_empty_split(tmp_path):
    empty = {"image": np.zeros((0, 4, 4, 3), np.uint8), "label": np.zeros(0, np.int64)}
    with pytest.raises(ip.DataError, match="test.npz.*empty"):
        ip.load_in_memory(npz_config(tmp_path, good_train(), empty))


def test_npz_missing_arrays(tmp_path):
    bad = {"x": good_train()["image"], "y": good_train()["label"]}
    with pytest.raises(ip.DataError) as e:
        ip.load_in_memory(npz_config(tmp_path, bad))
    message = str(e.value)
    assert "train.npz" in message and "'image'" in message and "['x', 'y']" in message

    only_images = {"image": good_train()["image"]}
    with pytest.raises(ip.DataError, match=r"\['label'\].*\['image'\]"):
        ip.load_in_memory(npz_config(tmp_path, only_images))


def test_npz_missing_file(tmp_path):
    config = dataclasses.replace(npz_config(tmp_path, good_train()), npz_test=str(tmp_path / "absent.npz"))
    with pytest.raises(ip.DataError, match="npz_test.*absent.npz.*does not exist"):
        ip.load_in_memory(config)


def test_npz_config_needs_both_files_and_a_label_array_name(tmp_path):
    refused(run_config(dataset="npz", npz_test=str(tmp_path / "test.npz")), "npz_train",
            r"config\.data\.npz_train/npz_test=\(None, .*test\.npz'\) is invalid")
    files = dict(dataset="npz", npz_train=str(tmp_path / "train.npz"), npz_test=str(tmp_path / "test.npz"))
    for bad in ("", 3):
        refused(run_config(**files, npz_label=bad), "npz_label", re.escape(f"config.data.npz_label={bad!r} is invalid"))
    from dnjax import config_lib

    config_lib.validate(run_config(npz_label=""))  # read by npz data only


@pytest.mark.parametrize("field", ["train_limit", "test_limit", "num_classes"])
@pytest.mark.parametrize("bad", [0, -3, 2.5, "5", True])
def test_bad_limits_and_num_classes_are_refused_naming_the_field(field, bad):
    refused(run_config(**{field: bad}), field)


def test_npz_count_mismatch(tmp_path):
    bad = good_train()
    bad["label"] = bad["label"][:-1]
    with pytest.raises(ip.DataError, match="8 images but 7 labels"):
        ip.load_in_memory(npz_config(tmp_path, bad))


def test_npz_labels_not_integers(tmp_path):
    bad = good_train()
    bad["label"] = bad["label"] + 0.5
    with pytest.raises(ip.DataError, match="train.npz.*float64.*integer class ids"):
        ip.load_in_memory(npz_config(tmp_path, bad))
    whole = good_train()
    whole["label"] = whole["label"].astype(np.float32)
    train, _, _ = ip.load_in_memory(npz_config(tmp_path, whole))
    assert train.labels.dtype == np.int32


def test_npz_not_an_npz_file(tmp_path):
    (tmp_path / "garbage.npz").write_text("not a zip file")
    config = dataclasses.replace(npz_config(tmp_path, good_train()), npz_train=str(tmp_path / "garbage.npz"))
    with pytest.raises(ip.DataError, match="garbage.npz"):
        ip.load_in_memory(config)


# --------------------------------------------------------------------------------------------
# normalize and augment


def test_normalize_known_values():
    images = np.array([0, 128, 255], np.uint8).reshape(1, 1, 3, 1)
    out = ip.normalize(images, (128.0,), (2.0,))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out).ravel(), [-64.0, 0.0, 63.5])

    rgb = np.array([[[[10, 20, 30]]]], np.uint8)
    out = jax.jit(ip.normalize, static_argnums=(1, 2))(rgb, (10.0, 10.0, 10.0), (1.0, 2.0, 4.0))
    np.testing.assert_allclose(np.asarray(out).ravel(), [0.0, 5.0, 5.0])

    scaled = ip.normalize(np.array([[[[0, 51, 255]]]], np.uint8), (0.0,) * 3, (255.0,) * 3)
    np.testing.assert_allclose(np.asarray(scaled).ravel(), [0.0, 0.2, 1.0], rtol=1e-6)


def random_batch(n=16, h=8, w=8, c=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, h, w, c)).astype(np.float32))


def test_augment_identity():
    x = random_batch()
    out = ip.augment(jax.random.key(0), x, pad=0, flip=False)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_augment_crop_is_a_shifted_copy_of_the_padded_image():
    n, h, w, c, pad = 6, 8, 8, 2, 4
    x = jnp.arange(1, n * h * w * c + 1, dtype=jnp.float32).reshape(n, h, w, c)  # no zeros
    out = np.asarray(jax.jit(lambda r, x: ip.augment(r, x, pad=pad, flip=False))(jax.random.key(3), x))
    assert out.shape == x.shape
    padded = np.pad(np.asarray(x), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = set()
    for i in range(n):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if np.array_equal(out[i], padded[i, dy : dy + h, dx : dx + w])
        ]
        assert len(matches) == 1, (i, matches)
        offsets.add(matches[0])
    assert len(offsets) > 1  # per-example offsets

    # One example by hand: where the crop lies over the padding it is zero, elsewhere the image.
    dy, dx = next(
        (dy, dx)
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
        if np.array_equal(out[0], padded[0, dy : dy + h, dx : dx + w])
    )
    sy, sx = dy - pad, dx - pad  # the image moved by (-sy, -sx)
    for r in range(h):
        for col in range(w):
            src_r, src_c = r + sy, col + sx
            inside = 0 <= src_r < h and 0 <= src_c < w
            expected = np.asarray(x)[0, src_r, src_c] if inside else np.zeros(c)
            np.testing.assert_array_equal(out[0, r, col], expected)


def test_augment_zero_border_is_the_mean_after_normalisation():
    mean, std = (100.0, 120.0, 140.0), (50.0, 60.0, 70.0)
    images = np.broadcast_to(np.array([100, 120, 140], np.uint8), (32, 6, 6, 3)).copy()
    images[:, 2:4, 2:4] = 255
    x = ip.normalize(images, mean, std)
    out = np.asarray(ip.augment(jax.random.key(1), x, pad=4, flip=True))
    # The mean pixel normalises to 0, the same value as the zero padding.
    assert np.all(np.asarray(x)[:, 0, 0] == 0.0)
    assert set(np.unique(out)) <= set(np.unique(np.asarray(x)))


def test_augment_flip_about_half_and_deterministic():
    n = 400
    x = random_batch(n=n, w=5)
    out = np.asarray(ip.augment(jax.random.key(7), x, pad=0, flip=True))
    xs = np.asarray(x)
    flipped = np.array([np.array_equal(out[i], xs[i, :, ::-1]) for i in range(n)])
    kept = np.array([np.array_equal(out[i], xs[i]) for i in range(n)])
    assert np.all(flipped ^ kept)
    assert 0.4 < flipped.mean() < 0.6

    again = np.asarray(ip.augment(jax.random.key(7), x, pad=0, flip=True))
    np.testing.assert_array_equal(out, again)
    other = np.asarray(ip.augment(jax.random.key(8), x, pad=0, flip=True))
    assert not np.array_equal(out, other)

    both = np.asarray(ip.augment(jax.random.key(9), x, pad=4, flip=True))
    np.testing.assert_array_equal(both, np.asarray(ip.augment(jax.random.key(9), x, pad=4, flip=True)))
    assert both.shape == x.shape


# --------------------------------------------------------------------------------------------
# order of the examples


def test_epoch_permutation_deterministic():
    p = ip.epoch_permutation(0, 3, 100)
    np.testing.assert_array_equal(p, ip.epoch_permutation(0, 3, 100))
    np.testing.assert_array_equal(np.sort(p), np.arange(100))
    assert not np.array_equal(p, ip.epoch_permutation(1, 3, 100))
    assert not np.array_equal(p, ip.epoch_permutation(0, 4, 100))


def test_train_batch_indices():
    n, batch, seed = 103, 10, 5
    per_epoch = n // batch
    for epoch in range(3):
        perm = ip.epoch_permutation(seed, epoch, n)
        seen = np.concatenate(
            [ip.train_batch_indices(seed, epoch * per_epoch + s, n, batch) for s in range(per_epoch)]
        )
        assert len(seen) == per_epoch * batch == 100
        assert len(np.unique(seen)) == len(seen)  # no repeats within an epoch
        np.testing.assert_array_equal(seen, perm[: per_epoch * batch])  # remainder dropped
    first = ip.train_batch_indices(seed, 0, n, batch)
    next_epoch_first = ip.train_batch_indices(seed, per_epoch, n, batch)
    assert not np.array_equal(first, next_epoch_first)
    # A pure function: a fresh call (a resumed run) gets the same batch.
    order._PERMUTATION_CACHE.clear()
    np.testing.assert_array_equal(ip.train_batch_indices(seed, 25, n, batch), ip.epoch_permutation(seed, 2, n)[50:60])
    with pytest.raises(ip.DataError, match="larger than the training set"):
        ip.train_batch_indices(seed, 0, 5, 8)


def test_eval_batches():
    for n, batch in [(25, 10), (30, 10), (3, 8), (0, 4)]:
        batches = list(ip.eval_batches(n, batch))
        assert len(batches) == -(-n // batch)
        seen = []
        for idx, mask in batches:
            assert idx.dtype == np.int32 and idx.shape == (batch,)
            assert mask.dtype == np.bool_ and mask.shape == (batch,)
            assert np.all(idx[~mask] == 0)
            seen.extend(idx[mask].tolist())
        assert sorted(seen) == list(range(n))
        assert len(seen) == n
    idx, mask = list(ip.eval_batches(25, 10))[-1]
    assert mask.tolist() == [True] * 5 + [False] * 5


# --------------------------------------------------------------------------------------------
# ImageNet transforms (synthetic arrays) and the streamed loader (tfds mock data)


def test_random_resized_crop_box_bounds():
    rng = np.random.default_rng(0)
    for height, width in [(100, 150), (20, 7), (1, 1), (300, 40)]:
        for _ in range(50):
            top, left, h, w = ip.random_resized_crop_box(rng, height, width)
            assert 0 <= top and 0 <= left and h >= 1 and w >= 1
            assert top + h <= height and left + w <= width
    areas = []
    for _ in range(500):
        _, _, h, w = ip.random_resized_crop_box(rng, 400, 400)
        areas.append(h * w / 400**2)
        assert 0.7 <= w / h <= 1.4
    assert 0.06 < min(areas) < 0.2 and max(areas) > 0.9


def test_imagenet_transforms_on_synthetic_images():
    image = np.full((40, 60, 3), 128, np.uint8)
    out = ip.imagenet_eval_transform(image, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    expected = (128 / 255 - np.array(ip.IMAGENET_MEAN)) / np.array(ip.IMAGENET_STD)
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-5)

    # Centre crop: a marker in the middle of a wide image lands in the middle of the crop.
    wide = np.zeros((256, 512, 3), np.uint8)
    wide[96:160, 224:288] = 255
    crop = ip.imagenet_eval_transform(wide, 224)
    assert crop.shape == (224, 224, 3)
    bright = crop[..., 0] > 0
    rows, cols = np.nonzero(bright)
    assert abs(rows.mean() - 111.5) < 2 and abs(cols.mean() - 111.5) < 2

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    a = ip.imagenet_train_transform(np.random.default_rng(1), picture, 32)
    b = ip.imagenet_train_transform(np.random.default_rng(1), picture, 32)
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a))

    gray = np.full((8, 8, 3), 0.5, np.float32)
    jittered = ip.color_jitter(np.random.default_rng(0), gray)
    assert np.allclose(jittered[..., 0], jittered[..., 1])  # grey stays grey
    lit = ip.pca_lighting(np.random.default_rng(0), gray)
    shift = lit[0, 0] - 0.5
    assert np.allclose(lit - 0.5, shift) and 0 < np.abs(shift).max() < 0.1


def test_imagenet_loader_with_mock_data_resumes_and_shards():
    import tensorflow_datasets as tfds

    config = data_config(dataset="imagenet2012", image_size=32)
    with tfds.testing.mock_data(num_examples=10):
        def loader(**kw):
            args = dict(split="train", global_batch=4, seed=0, process_index=0, process_count=2)
            args.update(kw)
            return ip.make_imagenet_loader(config, **args)

        it = iter(loader())
        first = next(it)
        assert first["image"].shape == (2, 32, 32, 3) and first["image"].dtype == np.float32
        assert first["label"].dtype == np.int32 and first["label"].shape == (2,)
        assert np.all((0 <= first["label"]) & (first["label"] < 1000))
        assert first["mask"].all()
        next(it)
        state = it.get_state()
        expected = [next(it) for _ in range(3)]  # crosses into the second epoch

        resumed = iter(loader())
        resumed.set_state(state)
        for want in expected:
            got = next(resumed)
            np.testing.assert_array_equal(got["image"], want["image"])
            np.testing.assert_array_equal(got["label"], want["label"])

        # Evaluation: every example once over the processes, padded batches masked out.
        def eval_labels(process_index, process_count, global_batch):
            batches = list(
                loader(split="validation", train=False, process_index=process_index,
                       process_count=process_count, global_batch=global_batch)
            )
            for b in batches:
                assert b["image"].shape == (global_batch // process_count, 32, 32, 3)
            images = np.concatenate([b["image"][b["mask"]] for b in batches])
            return len(batches), images

        n0, images0 = eval_labels(0, 2, 4)
        n1, images1 = eval_labels(1, 2, 4)
        n_all, images_all = eval_labels(0, 1, 4)
        assert n0 == n1 == 3  # 10 examples padded to 12: 6 per process in batches of 2
        assert len(images0) + len(images1) == len(images_all) == 10
        key = lambda arr: sorted(x.tobytes() for x in arr)
        assert key(np.concatenate([images0, images1])) == key(images_all)

        info = ip.imagenet_info(config)
        assert info.num_classes == 1000 and info.num_train == 10 and info.image_shape == (32, 32, 3)


def test_imagenet_loader_unprepared(tmp_path):
    with pytest.raises(ip.DataError) as e:
        ip.make_imagenet_loader(
            data_config(dataset="imagenet2012", data_dir=str(tmp_path)), split="train",
            global_batch=8, seed=0, process_index=0, process_count=1,
        )
    message = str(e.value)
    assert "tfds build imagenet2012" in message and "--manual_dir" in message
    assert str(tmp_path) in message


# --------------------------------------------------------------------------------------------
# npz splits in several parts, and the real CIFAR-100

CIFAR100 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar100"


def _part(tmp_path: Path, name: str, first_label: int, n: int = 4, shape=(4, 4, 3), dtype=np.uint8) -> str:
    """A part whose labels (and first pixel) count up from ``first_label``, so order is visible."""
    labels = np.arange(first_label, first_label + n)
    images = np.zeros((n, *shape), dtype)
    images[:, 0, 0, 0] = labels
    return write_npz(tmp_path / name, image=images, label=labels, coarse_label=labels // 4)


def test_npz_parts_concatenate_in_the_order_given(tmp_path):
    c = _part(tmp_path, "c.npz", 8)
    a = _part(tmp_path, "a.npz", 0)
    b = _part(tmp_path, "b.npz", 4)
    test = write_npz(tmp_path / "test.npz", **good_train(6))
    train, _, info = ip.load_in_memory(data_config(dataset="npz", npz_train=f"{c}, {a},{b}", npz_test=test,
                                                   num_classes=12))
    np.testing.assert_array_equal(train.labels, np.r_[8:12, 0:4, 4:8])
    np.testing.assert_array_equal(train.images[:, 0, 0, 0], train.labels)
    assert info.num_train == 12 and train.labels.dtype == np.int32
    # A glob takes its matches in sorted order; a limit cuts the concatenation.
    train, _, _ = ip.load_in_memory(data_config(dataset="npz", npz_train=str(tmp_path / "[abc].npz"),
                                                npz_test=test, train_limit=6, num_classes=12))
    np.testing.assert_array_equal(train.labels, np.r_[0:6])


def test_npz_label_key_selects_the_label_array(tmp_path):
    parts = ",".join(_part(tmp_path, f"p{i}.npz", 4 * i) for i in range(3))
    test = _part(tmp_path, "test.npz", 0)
    train, test_split, info = ip.load_in_memory(
        data_config(dataset="npz", npz_train=parts, npz_test=test, npz_label="coarse_label"))
    np.testing.assert_array_equal(train.labels, np.repeat([0, 1, 2], 4))
    assert info.num_classes == 3 and test_split.labels.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("case", ["shape", "dtype", "glob", "label key", "labels after key change",
                                  "empty part", "missing part", "named twice"])
def test_npz_parts_bad_input(tmp_path, case):
    a = _part(tmp_path, "a.npz", 0)
    test = _part(tmp_path, "test.npz", 0)
    fields = dict(dataset="npz", npz_train=a, npz_test=test)
    if case == "shape":
        b = _part(tmp_path, "b.npz", 4, shape=(4, 4, 1))
        fields["npz_train"], needles = f"{a},{b}", [b, "'image'", "(4, 4, 1)", "(4, 4, 3)", a]
    elif case == "dtype":
        b = _part(tmp_path, "b.npz", 4, dtype=np.float32)
        fields["npz_train"], needles = f"{a},{b}", [b, "float32", "uint8"]
    elif case == "glob":
        fields["npz_test"], needles = str(tmp_path / "nothing_*.npz"), ["npz_test", "nothing_*.npz", "matches no file"]
    elif case == "label key":
        fields["npz_label"], needles = "fine_label", [a, "fine_label", "coarse_label", "data.npz_label"]
    elif case == "labels after key change":
        fields["num_classes"], needles = 2, [a, "'label'", "outside [0, 2)"]
    elif case == "empty part":
        b = write_npz(tmp_path / "b.npz", image=np.zeros((0, 4, 4, 3), np.uint8), label=np.zeros(0, np.int64))
        fields["npz_train"], needles = f"{a},{b}", [b, "empty"]
    elif case == "missing part":
        fields["npz_train"], needles = f"{a},{tmp_path / 'gone.npz'}", ["gone.npz", "does not exist"]
    else:
        fields["npz_train"], needles = f"{a},{a}", [a, "named twice"]
    with pytest.raises(ip.DataError) as e:
        ip.load_in_memory(data_config(**fields))
    for needle in needles:
        assert needle in str(e.value), str(e.value)


@pytest.mark.skipif(not (CIFAR100 / "train_part1.npz").exists(),
                    reason="the real CIFAR-100 (../shared/data/cifar100) is not on this machine")
def test_cifar100_in_two_parts_is_the_whole_official_split():
    config = data_config(dataset="npz", npz_train=f"{CIFAR100 / 'train_part1.npz'},{CIFAR100 / 'train_part2.npz'}",
                         npz_test=str(CIFAR100 / "test.npz"))
    train, test, info = ip.load_in_memory(config)
    assert (info.num_train, info.num_test, info.num_classes, info.image_shape) == (50000, 10000, 100, (32, 32, 3))
    assert np.bincount(train.labels, minlength=100).tolist() == [500] * 100
    assert np.bincount(test.labels, minlength=100).tolist() == [100] * 100
    # The mean/std normalisation computed from the training images is CIFAR-100's published one.
    np.testing.assert_allclose(info.mean, (129.3, 124.1, 112.4), atol=0.05)
    np.testing.assert_allclose(info.std, (68.2, 65.4, 70.4), atol=0.05)
    # The superclasses: the same test images through a glob and the coarse label array.
    _, coarse, info = ip.load_in_memory(data_config(dataset="npz", npz_train=str(CIFAR100 / "test*.npz"),
                                                    npz_test=str(CIFAR100 / "test.npz"), npz_label="coarse_label"))
    assert info.num_classes == 20 and np.bincount(coarse.labels).tolist() == [500] * 20


# Class-balanced, nested training subsets (data.train_fraction) ------------------------------------


def imbalanced_train() -> dict:
    """60 images of 3 classes with 30, 20 and 10 images, the classes interleaved; the image's first
    pixel holds its index, so a subset can be traced back."""
    labels = np.array([0, 1, 2, 0, 1, 0] * 10)
    images = np.zeros((60, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(60)
    return {"image": images, "label": labels}


def test_train_fraction_is_class_balanced_nested_and_reproducible(tmp_path):
    cfg = lambda **kw: npz_config(tmp_path, imbalanced_train(), **kw)
    subsets = {}
    for f in (0.1, 0.5, 1.0):
        train, _, info = ip.load_in_memory(cfg(train_fraction=f, subset_seed=3))
        # round(f * n_c) images of every class (at least one): 30/20/10 -> 3/2/1 at 10%
        assert np.bincount(train.labels, minlength=3).tolist() == [max(1, round(f * n)) for n in (30, 20, 10)]
        assert info.num_train == len(train)
        ids = train.images[:, 0, 0, 0].astype(int)
        assert (np.array(imbalanced_train()["label"])[ids] == train.labels).all()  # labels stay with images
        assert list(ids) == sorted(ids)  # in the data's own order
        subsets[f] = set(ids.tolist())
    assert subsets[0.1] < subsets[0.5] < subsets[1.0] == set(range(60))  # nested
    again, _, _ = ip.load_in_memory(cfg(train_fraction=0.5, subset_seed=3))
    assert set(again.images[:, 0, 0, 0].tolist()) == subsets[0.5]  # reproducible
    other, _, _ = ip.load_in_memory(cfg(train_fraction=0.5, subset_seed=4))
    assert set(other.images[:, 0, 0, 0].tolist()) != subsets[0.5]  # the seed draws the subset
    whole, _, _ = ip.load_in_memory(cfg())
    assert len(whole) == 60  # no fraction: everything


def test_train_fraction_applies_to_every_in_memory_data_set():
    train, _, info = ip.load_in_memory(data_config(train_fraction=0.25, subset_seed=0))
    full, _, _ = ip.load_in_memory(data_config())
    counts, full_counts = np.bincount(train.labels), np.bincount(full.labels)
    assert counts.tolist() == [round(0.25 * n) for n in full_counts] and info.num_train == counts.sum()


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.1, "half", True])
def test_bad_train_fraction_is_refused_naming_the_field(bad):
    refused(run_config(train_fraction=bad), "train_fraction")


def test_config_refuses_a_bad_train_fraction_and_one_for_streamed_data():
    from configs import default
    from dnjax import config_lib

    c = default.get_config("densenet_tiny")
    c.data.train_fraction = 1.5
    with pytest.raises(config_lib.ConfigError, match=r"config\.data\.train_fraction=1\.5 is invalid: it must be in \(0, 1\]"):
        config_lib.validate(c)
    c.data.train_fraction = 0.5
    config_lib.validate(c)
    # an old run's config.json, without the subset fields, reads as no change on resume
    saved = json.loads(c.to_json_best_effort())
    del saved["data"]["train_fraction"], saved["data"]["subset_seed"]
    c.data.train_fraction = None
    assert config_lib.config_changes(saved, c) == {}
    c.data.train_fraction = 0.5
    c.data.dataset = "imagenet2012"
    with pytest.raises(config_lib.ConfigError, match=r"config\.data\.train_fraction=0\.5 is invalid: subsets"):
        config_lib.validate(c)


def test_bad_subset_seed_is_refused():
    refused(run_config(train_fraction=0.5, subset_seed=-1), "subset_seed", r"config\.data\.subset_seed=-1 is invalid")
