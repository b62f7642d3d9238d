"""The order of the examples: training batches as a pure function of (seed, step), so a resumed run
continues with exactly the batch it would have seen; evaluation batches padded and masked."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dnjax.data.base import DataError

# --------------------------------------------------------------------------------------------
# Order of the examples


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training examples in ``epoch``; depends only on (seed, epoch, n)."""
    if seed < 0 or epoch < 0 or n < 0:
        raise ValueError(f"seed, epoch and n must be >= 0, got {seed}, {epoch}, {n}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch), int(n)])))
    dtype = np.int32 if n <= np.iinfo(np.int32).max else np.int64
    return rng.permutation(n).astype(dtype)


_PERMUTATION_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _cached_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    key = (int(seed), int(epoch), int(n))
    perm = _PERMUTATION_CACHE.get(key)
    if perm is None:
        perm = epoch_permutation(*key)
        perm.setflags(write=False)
        if len(_PERMUTATION_CACHE) >= 2:
            _PERMUTATION_CACHE.clear()
        _PERMUTATION_CACHE[key] = perm
    return perm


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Full batches in one pass over ``n`` examples (the remainder of each epoch is dropped)."""
    if global_batch <= 0:
        raise ValueError(f"global_batch must be > 0, got {global_batch}")
    return n // global_batch


def train_batch_indices(seed: int, step: int, n: int, global_batch: int) -> np.ndarray:
    """Indices of the training examples of global step ``step`` (0-based).

    Epoch ``step // steps_per_epoch`` is ``epoch_permutation(seed, epoch, n)`` cut into
    ``n // global_batch`` batches; the remainder of each epoch is dropped. A pure function of its
    arguments, so a resumed run continues with exactly the next batch.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    per_epoch = steps_per_epoch(n, global_batch)
    if per_epoch == 0:
        raise DataError(
            f"The global batch ({global_batch}) is larger than the training set ({n} examples); "
            "lower batch_size or raise data.train_limit."
        )
    epoch, within = divmod(int(step), per_epoch)
    start = within * global_batch
    return _cached_permutation(seed, epoch, n)[start : start + global_batch]


def eval_batches(n: int, global_batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices int32 [global_batch], mask bool [global_batch]) covering ``range(n)`` once, in order.

    The last batch is padded with index 0 and mask False.
    """
    if global_batch <= 0:
        raise ValueError(f"global_batch must be > 0, got {global_batch}")
    for start in range(0, n, global_batch):
        count = min(global_batch, n - start)
        indices = np.zeros((global_batch,), np.int32)
        indices[:count] = np.arange(start, start + count, dtype=np.int32)
        mask = np.zeros((global_batch,), np.bool_)
        mask[:count] = True
        yield indices, mask

