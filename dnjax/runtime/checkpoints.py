"""Orbax checkpoints of a run: the newest few, and the best by test error.

``workdir/checkpoints/<step>`` keeps the last ``keep`` saves, ``workdir/best/<step>`` the one with
the lowest test error. Each save holds the train state and a small JSON ``meta`` (step, epoch,
the model's config and parameter shapes). The data position is the step itself: batches are a
pure function of (seed, step), so a restored run continues with exactly the next batch.

Orbax writes into a temporary directory and renames it when complete, so a save interrupted by a
crash never becomes the newest checkpoint; such leftovers are removed when the next run starts.
On an object store (``gs://``), which cannot rename, orbax writes the step directory in place and
adds ``commit_success.txt`` last; a step without it is not a checkpoint (:func:`committed_steps`).
The meta also holds a fingerprint of every array of the state, checked on restore: orbax's files
detect truncation and most garbage, but not every flipped bit of an array's compressed data.

On restore, a damaged newest checkpoint is skipped (with the reason logged) in favour of the newest
intact one. The damaged directory is not deleted: it is renamed ``<step>.damaged`` next to the
others, out of the way of the step the resumed run will save again. When none is intact the run
stops with :class:`CheckpointError` and nothing is changed.

The best checkpoint stays consistent with the newest one through a crash: before a newer checkpoint
is started, earlier best saves are complete, and a best save that the crash cut short is redone
from the restored state (the meta of an evaluated step keeps its test error).

Retention is orbax's own: a ``LatestN`` preservation policy for ``checkpoints/`` and ``BestN`` for
``best/``. They stay two managers rather than one with ``AnyPreservationPolicy(LatestN, BestN)``
because the best checkpoint is a directory of its own, ``best/<step>``, that users and tools
address (``evaluate --which=best``, ``feature_reuse``) and that the fault guarantees are stated
for: an unreadable best is set aside as ``best/<step>.damaged`` while training goes on, and a
damaged newest checkpoint is renamed without touching the best. In one manager the best would be
one of the numbered steps in ``checkpoints/``, and orbax refuses to open a directory in which any
step's metrics are unreadable. Orbax does not fingerprint arrays or set damaged steps aside; this
module does both.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from dnjax import storage

log = logging.getLogger("dnjax")


class CheckpointError(RuntimeError):
    pass


def param_shapes(params: Any) -> dict[str, list[int]]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): list(np.shape(leaf)) for path, leaf in flat}


def compare_shapes(saved: dict[str, list[int]], current: dict[str, list[int]]) -> list[str]:
    problems = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        if a != b:
            problems.append(f"{k}: checkpoint {a if a is not None else 'absent'}, config {b if b is not None else 'absent'}")
    return problems


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    """A position-weighted sum of the array's bits, modulo 2**32.

    Any single changed word changes it (the weights are odd, hence invertible mod 2**32), and
    integer sums are exact in any order, so it is the same however the array is sharded.
    """
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        words = x.astype(jnp.uint32)
    elif x.dtype.itemsize < 4:
        words = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(jnp.uint32)
    else:  # 8-byte values become pairs of words
        words = jax.lax.bitcast_convert_type(x, jnp.uint32)
    words = words.reshape(-1)
    weights = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1
    return jnp.sum(words * weights, dtype=jnp.uint32)


_fingerprints = jax.jit(lambda leaves: jnp.stack([_leaf_fingerprint(x) for x in leaves]))


def fingerprint(tree: Any) -> dict[str, int]:
    """Per-array fingerprints of a (replicated) pytree, keyed by the arrays' paths."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not flat:
        return {}
    values = np.asarray(jax.device_get(_fingerprints([leaf for _, leaf in flat])))
    return {jax.tree_util.keystr(path): int(v) for (path, _), v in zip(flat, values)}


def _move_aside(step_dir: epath.Path) -> epath.Path:
    """Renames a damaged step directory to ``<step>.damaged`` (orbax ignores such names). On an
    object store the rename is a copy and a delete: the copy is complete before the step goes."""
    dst, n = step_dir.with_name(f"{step_dir.name}.damaged"), 1
    while dst.exists():
        dst, n = step_dir.with_name(f"{step_dir.name}.damaged-{n}"), n + 1
    if storage.is_remote(step_dir):
        _copy_tree(step_dir, dst)
        step_dir.rmtree()
    else:
        step_dir.rename(dst)
    return dst


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
    for p in src.iterdir():  # (epath refuses a recursive glob on GCS)
        if p.is_dir():
            _copy_tree(p, dst / p.name)
        else:
            (dst / p.name).write_bytes(p.read_bytes())


class Checkpoints:
    """The checkpoints of one workdir.

    ``training=True`` is for the run that trains into the workdir: it removes what a crashed save
    left behind and sets damaged checkpoints aside. Tools that only read (evaluate) leave the
    directory as they found it, even while a run is writing to it.
    """

    def __init__(self, workdir: str | os.PathLike, keep: int = 3, async_save: bool = True, *,
                 training: bool = False):
        workdir = storage.path(workdir)
        self.training = training
        policies = ocp.checkpoint_managers
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(
                preservation_policy=policies.LatestN(n=keep), create=True,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=training,  # what a crash left of an unfinished save
                multiprocessing_options=self._barriers("latest"),
            ),
        )
        test_error = lambda m: m["test_error"]  # noqa: E731
        best_options = ocp.CheckpointManagerOptions(
            # BestN keeps the lowest test error (reverse: orbax ranks descending for 'min');
            # best_fn is still what orbax's best_step() and its reading of the metrics use.
            preservation_policy=policies.BestN(get_metric_fn=test_error, reverse=True, n=1),
            create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=training,
            best_fn=test_error, best_mode="min",
            multiprocessing_options=self._barriers("best"),
        )
        if training:  # before orbax reads every best checkpoint's test error
            self._repair_best(workdir / "best")
        try:
            self.best = ocp.CheckpointManager(workdir / "best", options=best_options)
        except Exception as e:
            self.latest.close()
            raise CheckpointError(f"Cannot read the best checkpoints in {workdir / 'best'}: "
                                  f"{storage.one_line(e)}") from None
        self._fingerprinted: tuple[int | None, dict[str, int] | None] = (None, None)
        self._quiet = False  # whether this instance holds storage.quiet_abandoned_reads

    @staticmethod
    def _barriers(prefix: str) -> ocp.options.MultiprocessingOptions:
        # The two managers save concurrently: distinct barrier names keep their
        # cross-process synchronisation apart.
        return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix)

    @staticmethod
    def _args(state: Any, meta: dict[str, Any], items: dict[str, Any] | None = None) -> ocp.args.Composite:
        # ``items``: what the data source saves besides the state (a streamed input's position)
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
                                  **(items or {}))

    def _with_fingerprint(self, step: int, state: Any, meta: dict[str, Any]) -> dict[str, Any]:
        if self._fingerprinted[0] != step:
            self._fingerprinted = (step, fingerprint(state))
        return dict(meta, fingerprint=self._fingerprinted[1])

    def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False,
             items: dict[str, Any] | None = None) -> bool:
        # Every earlier best save completes before a newer checkpoint can: a crash can then lose
        # at most the best save of the step being resumed, which complete_best() redoes.
        self.best.wait_until_finished()
        meta = self._with_fingerprint(step, state, meta)
        return self.latest.save(step, args=self._args(state, meta, items), force=force)

    def _best_error(self) -> float | None:
        best = self.best.best_step()
        if best is None:
            return None
        try:
            prev = self.best.metrics(best)
        except Exception as e:  # damaged metrics: the next best save replaces it
            log.warning("Cannot read the test error of %s/%d (%s); it will be replaced",
                        self.best.directory, best, e)
            return None
        return None if prev is None else float(prev["test_error"])

    def save_best(self, step: int, state: Any, meta: dict[str, Any], test_error: float) -> None:
        prev = self._best_error()
        if prev is not None and test_error >= prev:
            return
        # the meta keeps the test error too: the copy that repairs a lost metrics file
        meta = dict(self._with_fingerprint(step, state, meta), test_error=float(test_error))
        self.best.save(step, args=self._args(state, meta), metrics={"test_error": float(test_error)},
                       force=True)

    def complete_best(self, state: Any, meta: dict[str, Any]) -> None:
        """Redoes the best save of the restored step if a crash cut it short.

        ``meta`` is the restored checkpoint's: it has a ``test_error`` when that step was evaluated.
        """
        step, test_error = meta.get("step"), meta.get("test_error")
        if step is None or test_error is None or step in self.best.all_steps():
            return
        self.save_best(step, state, meta, test_error)

    def steps(self, which: str = "latest") -> list[int]:
        mngr = self.latest if which == "latest" else self.best
        return sorted(mngr.all_steps(), reverse=True)

    def restore(self, abstract_state: Any, *, which: str = "latest", step: int | None = None,
                shapes: dict[str, list[int]] | None = None,
                items: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]] | None:
        """Restores the newest intact checkpoint (or ``step``); None when there is none at all.

        ``shapes`` are the current config's parameter shapes: a checkpoint of a different model
        is refused with the differences listed, before any array is read. ``items`` are restored
        with the state (the data source's ``restore_items()``).
        """
        mngr = self.latest if which == "latest" else self.best
        candidates = [step] if step is not None else self.steps(which)
        if not candidates:
            return None
        if not self._quiet:
            storage.quiet_abandoned_reads.acquire()
            self._quiet = True
        skipped = []
        for s in candidates:
            try:
                meta = mngr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            except Exception as e:  # damaged or partial: fall back to an older one
                skipped.append((s, f"unreadable metadata ({storage.one_line(e)})"))
                log.warning("Skipping checkpoint %s/%d: %s", mngr.directory, s, skipped[-1][1])
                continue
            if shapes is not None and meta.get("param_shapes") is not None:
                problems = compare_shapes(meta["param_shapes"], shapes)
                if problems:
                    raise CheckpointError(
                        f"{mngr.directory}/{s} holds a checkpoint of a different model "
                        f"({meta.get('model', {}).get('name', '?')}): {len(problems)} parameter(s) differ, "
                        f"e.g. {problems[0]}. Use a fresh --workdir for this config, or restore the "
                        "config that wrote it. Nothing in the workdir was changed."
                    )
            try:
                restored = mngr.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), **(items or {})))
            except Exception as e:
                skipped.append((s, f"unreadable state ({storage.one_line(e)})"))
                log.warning("Skipping checkpoint %s/%d: %s", mngr.directory, s, skipped[-1][1])
                continue
            if meta.get("fingerprint") is not None:
                got = fingerprint(restored["state"])
                bad = sorted(k for k in set(got) | set(meta["fingerprint"])
                             if got.get(k) != meta["fingerprint"].get(k))
                if bad:
                    skipped.append((s, f"corrupted data: {len(bad)} array(s) differ from the "
                                       f"fingerprint saved with them, e.g. {bad[0]}"))
                    log.warning("Skipping checkpoint %s/%d: %s", mngr.directory, s, skipped[-1][1])
                    continue
            if skipped:
                log.warning("Resumed from checkpoint %d after skipping damaged %s",
                            s, ", ".join(str(k) for k, _ in skipped))
                if self.training and which == "latest" and step is None:
                    self._set_aside([k for k, _ in skipped])
            return restored["state"], meta
        raise CheckpointError(
            f"No intact checkpoint in {mngr.directory}: "
            + "; ".join(f"step {s}: {why}" for s, why in skipped)
            + ". The damaged ones were left in place; move them away to start afresh."
        )

    def _set_aside(self, steps: list[int]) -> None:
        """Renames damaged step directories to ``<step>.damaged``: kept for inspection, and out of
        the way of the resumed run, which saves those steps again."""
        if jax.process_index() == 0:
            for s in steps:
                src = epath.Path(self.latest.directory) / str(s)
                log.warning("Moved the damaged checkpoint %s to %s", src, _move_aside(src))
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes("dnjax_set_aside_damaged")
        self.latest.reload()

    @staticmethod
    def _repair_best(directory: epath.Path) -> None:
        """Every best checkpoint gets a readable test error, or is set aside.

        orbax keeps a best checkpoint's test error in ``best/<step>/metrics``; a checkpoint whose
        file is missing is not ranked at all (so a worse one would be kept beside it) and an
        unreadable one stops orbax. The error is also in the checkpoint's meta: it is written back
        from there, and a checkpoint with neither is renamed ``<step>.damaged`` with the reason.
        """
        if jax.process_index() == 0 and directory.is_dir():
            for d in sorted((p for p in directory.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
                metrics = d / "metrics" / "metrics"
                try:
                    float(json.loads(metrics.read_text())["test_error"])
                    continue
                except Exception as e:  # noqa: BLE001 - any way of being unreadable
                    problem = "missing" if isinstance(e, FileNotFoundError) else f"unreadable ({storage.one_line(e)})"
                try:
                    meta = json.loads((d / "meta" / "metadata").read_text())
                    test_error = float(meta["test_error"])
                except Exception as e:  # noqa: BLE001
                    log.warning("The best checkpoint %s has a %s test error and its meta cannot supply "
                                "it (%s); moved it to %s. The run's next evaluations choose a new best.",
                                d, problem, storage.one_line(e), _move_aside(d))
                    continue
                metrics.parent.mkdir(parents=True, exist_ok=True)
                storage.write_whole(metrics, json.dumps({"test_error": test_error}))
                log.warning("The best checkpoint %s had a %s test error; restored %.4g from its meta",
                            d, problem, test_error)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes("dnjax_repair_best")

    def reached_preemption(self, step: int) -> bool:
        return self.latest.reached_preemption(step)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def idle(self) -> bool:
        """Whether no save is being written in the background (for a watcher thread)."""
        return not (self.latest.is_saving_in_progress() or self.best.is_saving_in_progress())

    def failure(self) -> BaseException | None:
        """The error a background save ended with, before anyone waits for it (for a watcher
        thread: :meth:`wait` would raise it, and orbax would log it, in the waiting thread). Orbax
        keeps it on the save's finalize thread."""
        for mngr in (self.latest, self.best):
            ref = getattr(mngr, "_finalize_thread", None)
            thread = ref.get() if ref is not None else None
            error = getattr(thread, "exception", None)
            if error is not None:
                return error
        return None

    def abandon(self) -> None:
        """Leaves the managers without waiting for their saves: after a storage error, when what
        is still being written can only fail and the process is about to exit. The tracebacks of
        orbax's threads are then not printed on top of the run's own one-line error."""
        if self._quiet:
            self._quiet = False
            storage.quiet_abandoned_reads.release()

    def close(self) -> None:
        try:
            self.wait()
            self.latest.close()
            self.best.close()
        finally:
            if self._quiet:
                self._quiet = False
                storage.quiet_abandoned_reads.release()


def committed_steps(workdir: str | os.PathLike) -> list[int]:
    """The steps of ``workdir/checkpoints`` whose saves completed, oldest first: orbax renames a
    save's temporary directory to its step when it is complete, or on an object store writes the
    step's ``commit_success.txt`` last."""
    path = storage.path(workdir) / "checkpoints"
    if not storage.is_remote(path):
        return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []
    return sorted(s for s in ocp.path.step.checkpoint_steps(path) if isinstance(s, int))


def has_checkpoints(workdir: str | os.PathLike) -> bool:
    return bool(committed_steps(workdir))


def read_weights(workdir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The parameters and BatchNorm statistics (numpy) and the meta of a workdir's newest
    checkpoint, checked against the fingerprints saved with them: what another run starts from
    (``config.init_from``). Reads only; the optimizer state, whatever its structure, is skipped.
    """
    path = storage.path(workdir) / "checkpoints"
    steps = committed_steps(workdir)
    if not steps:
        raise CheckpointError(f"{workdir} holds no checkpoint (no step directory in {path})")
    step_dir = path / str(steps[-1])
    storage.quiet_abandoned_reads.acquire()
    try:
        meta = json.loads((step_dir / "meta" / "metadata").read_text())
        with ocp.PyTreeCheckpointer() as ckptr:
            tree = ckptr.metadata(step_dir / "state").item_metadata.tree
            wanted = {k: tree[k] for k in ("params", "batch_stats") if k in tree}
            args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
            restored = ckptr.restore(step_dir / "state", item=wanted, restore_args=args,
                                     partial_restore=True)
    except Exception as e:
        raise CheckpointError(f"Cannot read the checkpoint {step_dir}: {storage.one_line(e)}") from None
    finally:
        storage.quiet_abandoned_reads.release()
    saved = meta.get("fingerprint") or {}
    for part in ("params", "batch_stats"):
        for key, value in fingerprint(restored.get(part, {})).items():
            want = saved.get(f".{part}{key}")
            if want is not None and want != value:
                raise CheckpointError(f"{step_dir}: {part}{key} differs from the fingerprint saved "
                                      "with it; the checkpoint is damaged")
    return restored["params"], restored.get("batch_stats", {}), meta
