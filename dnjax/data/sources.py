"""What a training run reads: a :class:`DataSource`, device-resident or streamed.

A source hands out batches and says how a batch becomes the model's input, so the training loop
has no branches on where the data lives (``dnjax.train`` compiles the steps from these):

* ``train_batches(start_step)``: the arguments of the train step after the state, from a step on,
  and ``train_shardings``: how each of them is laid out over the mesh;
* ``eval_batches(batch_size)``: the arguments of the eval step after the state, covering the test
  split once, and ``eval_shardings``;
* ``prepare_train(ctx, step, *batch)`` -> ``(x, y)`` and ``prepare_eval(ctx, *batch)`` ->
  ``(x, y, mask)``: pure functions traced inside the jitted steps (gathering, normalisation,
  augmentation; ``ctx`` holds the run's static facts: normalisation constants, augmentation,
  seed);
* ``save_items()`` / ``restore_items()``: what a checkpoint holds besides the state (orbax
  ``args`` by item name).

:class:`DeviceResident` holds a CIFAR-sized data set on the accelerators: a step receives only
the indices of its batch and gathers, normalises and augments inside the jitted step; its batches
are a function of (seed, step), so a checkpoint needs nothing but the state. :class:`Streamed`
(ImageNet) decodes and augments on the hosts with grain; the iterator's position is part of every
checkpoint. :func:`make_source` picks one from the config (grain is imported only for the latter).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Protocol

import jax
import numpy as np

from dnjax import sharding
from dnjax.data import augmentation as augment_lib, order
from dnjax.data.base import DatasetInfo, DataSpec, Split
from dnjax.data.choices import STREAMED_DATASETS


class DataSource(Protocol):
    info: DatasetInfo
    train_shardings: tuple
    eval_shardings: tuple

    def prepare_train(self, ctx, step: jax.Array, *batch) -> tuple[jax.Array, jax.Array]: ...

    def prepare_eval(self, ctx, *batch) -> tuple[jax.Array, jax.Array, jax.Array]: ...

    def train_batches(self, start_step: int) -> Iterator[tuple]: ...

    def eval_batches(self, batch_size: int) -> Iterator[tuple]: ...

    def save_items(self) -> dict[str, Any]: ...

    def restore_items(self) -> dict[str, Any]: ...


def augment_rng(seed: int, step: jax.Array) -> jax.Array:
    """The augmentation key of ``step``: a function of (seed, step) only."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), step)


class DeviceResident:
    """A data set held on the devices (replicated); steps gather their batch by index."""

    def __init__(self, config, mesh, train: Split, test: Split, info: DatasetInfo):
        self.config, self.info = config, info
        self._host = (train, test)
        self._device: tuple[jax.Array, ...] | None = None
        self.replicated = sharding.replicated(mesh)
        self.batch_sharding = sharding.batch_sharded(mesh)
        rep, bat = self.replicated, self.batch_sharding
        self.train_shardings = (rep, rep, bat)  # images, labels, indices
        self.eval_shardings = (rep, rep, bat, bat)  # images, labels, indices, mask

    def arrays(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Train images, train labels, test images, test labels: replicated device arrays, put
        there on first use."""
        if self._device is None:
            train, test = self._host
            self._device = tuple(sharding.global_array(a, self.replicated)
                                 for a in (train.images, train.labels, test.images, test.labels))
        return self._device

    def _gather(self, ctx, images, labels, indices):
        x = jax.lax.with_sharding_constraint(images[indices], self.batch_sharding)
        return augment_lib.normalize(x, ctx.mean, ctx.std), labels[indices]

    def prepare_train(self, ctx, step, images, labels, indices):
        x, y = self._gather(ctx, images, labels, indices)
        if ctx.augment:
            x = augment_lib.augment(augment_rng(ctx.seed, step), x, pad=ctx.pad, flip=ctx.flip)
        return augment_lib.resize(x, ctx.resize), y

    def prepare_eval(self, ctx, images, labels, indices, mask):
        x, y = self._gather(ctx, images, labels, indices)
        return augment_lib.resize(x, ctx.resize), y, mask

    def _indices(self, host: np.ndarray) -> jax.Array:
        return sharding.global_array(host.astype(np.int32), self.batch_sharding)

    def train_batches(self, start_step: int) -> Iterator[tuple]:
        images, labels, _, _ = self.arrays()
        step = start_step
        while True:
            idx = order.train_batch_indices(self.config.seed, step, self.info.num_train,
                                            self.config.batch_size)
            yield images, labels, self._indices(idx)
            step += 1

    def eval_batches(self, batch_size: int) -> Iterator[tuple]:
        _, _, images, labels = self.arrays()
        for idx, mask in order.eval_batches(self.info.num_test, batch_size):
            yield images, labels, self._indices(idx), sharding.global_array(mask, self.batch_sharding)

    def save_items(self) -> dict[str, Any]:
        return {}  # batches are a function of (seed, step)

    def restore_items(self) -> dict[str, Any]:
        return {}


class Streamed:
    """ImageNet through grain: each process feeds its own slice of every global batch, which the
    hosts have already decoded, normalised and augmented."""

    def __init__(self, config, mesh):
        from dnjax.data import imagenet

        self._imagenet = imagenet
        self.config = config
        self.spec = DataSpec.of(config.data)
        self.info = imagenet.imagenet_info(self.spec)
        self.batch_sharding = sharding.batch_sharded(mesh)
        self.replicated = sharding.replicated(mesh)
        bat = self.batch_sharding
        self.train_shardings = (bat, bat)  # images, labels
        self.eval_shardings = (bat, bat, bat)  # images, labels, mask
        self._train_iter = None

    def _loader(self, train: bool, batch_size: int):
        c = self.config
        return self._imagenet.make_imagenet_loader(
            self.spec, split="train" if train else "validation", global_batch=batch_size, seed=c.seed,
            process_index=jax.process_index(), process_count=jax.process_count(), train=train,
        )

    @property
    def train_iter(self):
        """The training iterator: created once, restored from a checkpoint before the first batch."""
        if self._train_iter is None:
            self._train_iter = iter(self._loader(train=True, batch_size=self.config.batch_size))
        return self._train_iter

    def _global(self, local: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local))

    def prepare_train(self, ctx, step, images, labels):
        return images, labels

    def prepare_eval(self, ctx, images, labels, mask):
        return images, labels, mask

    def train_batches(self, start_step: int) -> Iterator[tuple]:
        del start_step  # the iterator's restored position is the step's
        for batch in self.train_iter:
            yield self._global(batch["image"]), self._global(batch["label"])

    def eval_batches(self, batch_size: int) -> Iterator[tuple]:
        for b in self._loader(train=False, batch_size=batch_size):
            yield tuple(self._global(b[k]) for k in ("image", "label", "mask"))

    def save_items(self) -> dict[str, Any]:
        import grain

        return {"data": grain.checkpoint.CheckpointSave(self.train_iter)}  # one file per process

    def restore_items(self) -> dict[str, Any]:
        import grain

        return {"data": grain.checkpoint.CheckpointRestore(self.train_iter)}


def make_source(config, mesh) -> DataSource:
    """The configured data, read and checked (a :class:`~dnjax.data.DataError` before anything is
    compiled): streamed for ImageNet, device-resident otherwise."""
    if config.data.dataset in STREAMED_DATASETS:
        return Streamed(config, mesh)
    from dnjax.data.in_memory import load_in_memory

    train, test, info = load_in_memory(DataSpec.of(config.data))
    size = config.data.resize
    if size:  # the steps enlarge the batches on the device: the model sees size x size images
        info = dataclasses.replace(info, image_shape=(size, size, info.image_shape[-1]))
    return DeviceResident(config, mesh, train, test, info)


__all__ = ["DataSource", "DeviceResident", "Streamed", "augment_rng", "make_source"]
