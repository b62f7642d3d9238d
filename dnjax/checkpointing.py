"""Orbax checkpoints of a run: the newest few, and the best by test error.

``workdir/checkpoints/<step>`` keeps the last ``keep`` saves, ``workdir/best/<step>`` the one with
the lowest test error. Each save holds the train state and a small JSON ``meta`` (step, epoch,
the model's config and parameter shapes). The data position is the step itself: batches are a
pure function of (seed, step), so a restored run continues with exactly the next batch.

Orbax writes into a temporary directory and renames it when complete, so a save interrupted by a
crash never becomes the newest checkpoint. On restore, a damaged newest checkpoint is skipped (with
the reason logged) in favour of the newest intact one; nothing is deleted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

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


class Checkpoints:
    def __init__(self, workdir: str | Path, keep: int = 3, async_save: bool = True):
        workdir = Path(workdir).absolute()
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
                multiprocessing_options=self._barriers("latest"),
            ),
        )
        self.best = ocp.CheckpointManager(
            workdir / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, enable_async_checkpointing=async_save,
                best_fn=lambda m: m["test_error"], best_mode="min",
                multiprocessing_options=self._barriers("best"),
            ),
        )

    @staticmethod
    def _barriers(prefix: str) -> ocp.options.MultiprocessingOptions:
        # The two managers save concurrently: distinct barrier names keep their
        # cross-process synchronisation apart.
        return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix)

    @staticmethod
    def _args(state: Any, meta: dict[str, Any], data_iter: Any = None) -> ocp.args.Composite:
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iter is not None:  # a streamed input's position, one file per process
            import grain

            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return ocp.args.Composite(**items)

    def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False,
             data_iter: Any = None) -> bool:
        return self.latest.save(step, args=self._args(state, meta, data_iter), force=force)

    def save_best(self, step: int, state: Any, meta: dict[str, Any], test_error: float) -> None:
        best = self.best.best_step()
        if best is not None:
            prev = self.best.metrics(best)
            if prev is not None and test_error >= prev["test_error"]:
                return
        self.best.save(step, args=self._args(state, meta), metrics={"test_error": float(test_error)},
                       force=True)

    def steps(self, which: str = "latest") -> list[int]:
        mngr = self.latest if which == "latest" else self.best
        return sorted(mngr.all_steps(), reverse=True)

    def restore(self, abstract_state: Any, *, which: str = "latest", step: int | None = None,
                shapes: dict[str, list[int]] | None = None,
                data_iter: Any = None) -> tuple[Any, dict[str, Any]] | None:
        """Restores the newest intact checkpoint (or ``step``); None when there is none at all.

        ``shapes`` are the current config's parameter shapes: a checkpoint of a different model
        is refused with the differences listed, before any array is read.
        """
        mngr = self.latest if which == "latest" else self.best
        candidates = [step] if step is not None else self.steps(which)
        if not candidates:
            return None
        skipped = []
        for s in candidates:
            try:
                meta = mngr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            except Exception as e:  # damaged or partial: fall back to an older one
                skipped.append((s, f"unreadable metadata ({type(e).__name__}: {str(e)[:200]})"))
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
                items = dict(state=ocp.args.StandardRestore(abstract_state))
                if data_iter is not None:
                    import grain

                    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
                restored = mngr.restore(s, args=ocp.args.Composite(**items))
            except Exception as e:
                skipped.append((s, f"unreadable state ({type(e).__name__}: {str(e)[:200]})"))
                log.warning("Skipping checkpoint %s/%d: %s", mngr.directory, s, skipped[-1][1])
                continue
            if skipped:
                log.warning("Resumed from checkpoint %d after skipping damaged %s",
                            s, ", ".join(str(k) for k, _ in skipped))
            return restored["state"], meta
        raise CheckpointError(
            f"No intact checkpoint in {mngr.directory}: "
            + "; ".join(f"step {s}: {why}" for s, why in skipped)
            + ". The damaged ones were left in place; move them away to start afresh."
        )

    def reached_preemption(self, step: int) -> bool:
        return self.latest.reached_preemption(step)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()
