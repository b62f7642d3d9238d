"""Training and evaluation: the train state, the steps, building a run and the loop that resumes.

The state (parameters, BatchNorm statistics, optimizer state, step) is one pytree, created already
replicated over the mesh. ``train_step_on_batch`` and ``eval_on_batch`` are pure functions of a
prepared batch; the run's data source (:mod:`dnjax.data.sources`) wraps them into the jitted
steps with explicit shardings (the train step donates the state). CIFAR-sized data sets live on
the devices: a step receives only the indices of its batch, and gathering, normalisation and
augmentation happen inside the jitted step, so the host does no per-image work.

:class:`Setup` builds everything a run needs from its config (data, mesh, model, optimizer,
steps) and evaluates a state; :class:`Trainer` adds the workdir and the training loop.
``dnjax.evaluate`` uses the setup only.

Batch indices and augmentation randomness are pure functions of (seed, step), so a run restored
from a checkpoint at step s trains on exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dnjax import checkpointing, config_lib, logs, profiling, sharding, storage
from dnjax.data import sources
from dnjax.data.choices import STREAMED_DATASETS
from dnjax.workdir import LEASE_SECONDS, WorkdirError, check_writable, lock_for, write_error

log = logging.getLogger("dnjax")

# Exit status of a run stopped by SIGTERM after saving (128 + SIGTERM, what shells report).
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


class NonFiniteLossError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Optimizer


def make_schedule(config: ml_collections.ConfigDict, sched: config_lib.Schedule) -> optax.Schedule:
    o = config.optim
    lr = o.learning_rate
    if o.schedule == "piecewise":
        main = optax.piecewise_constant_schedule(
            lr, {b - sched.warmup_steps: o.decay_factor for b in sched.boundaries}
        )
    elif o.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(1, sched.total_steps - sched.warmup_steps))
    else:
        main = optax.constant_schedule(lr)
    if sched.warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(lr * o.warmup_factor, lr, sched.warmup_steps)
    return optax.join_schedules([warmup, main], [sched.warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule):
    o = config.optim
    if o.name == "sgd":
        # Torch-style SGD: weight decay is added to the gradient before momentum (coupled L2).
        return optax.chain(
            optax.add_decayed_weights(o.weight_decay),
            optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov),
        )
    return optax.adamw(schedule, b1=o.momentum, weight_decay=o.weight_decay)


# --------------------------------------------------------------------------------------------
# State and steps


def init_variables(model: nn.Module, image_shape, seed: int) -> dict[str, Any]:
    x = jnp.zeros((1, *image_shape), jnp.float32)
    rng = jax.random.fold_in(jax.random.key(seed), 0)
    return model.init({"params": rng, "dropout": rng}, x, train=False)


def create_train_state(model, tx, image_shape, seed, mesh) -> TrainState:
    """Initialises the state directly into its (replicated) sharding."""

    def init():
        variables = init_variables(model, image_shape, seed)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
        )

    abstract = jax.eval_shape(init)
    shardings = sharding.tree_shardings(abstract, sharding.replicated(mesh))
    return jax.jit(init, out_shardings=shardings)()


def abstract_state(state_or_fn, mesh) -> Any:
    rep = sharding.replicated(mesh)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), state_or_fn)


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What the steps need besides the state: static facts about the data and the recipe
    (normalisation and augmentation are applied by a device-resident data source's step)."""

    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    pad: int
    flip: bool
    seed: int
    num_classes: int
    resize: int | None = None  # in-memory images are resized to this on the device


def dropout_rng(seed: int, step: jax.Array) -> jax.Array:
    """The dropout key of ``step`` (the augmentation key is the data source's,
    :func:`dnjax.data.sources.augment_rng`)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 2), step)


def train_step_on_batch(ctx: StepContext, state: TrainState, x, y):
    """One SGD step on a prepared (normalised, augmented) batch ``x`` with labels ``y``."""
    return _apply_gradients(ctx, state, x, y, dropout_rng(ctx.seed, state.step))


def _apply_gradients(ctx: StepContext, state: TrainState, x, y, dropout_rng):
    def loss_fn(params):
        logits, new_vars = ctx.model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (logits, new_vars["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = ctx.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
        "learning_rate": ctx.schedule(state.step),
    }
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics


def eval_on_batch(ctx: StepContext, state: TrainState, x, y, mask):
    """Sums over one padded batch: masked-out (padding) examples count for nothing."""
    logits = ctx.model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    k = min(5, ctx.num_classes)
    topk = jax.lax.top_k(logits, k)[1]
    m = mask.astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(loss * m),
        "correct1": jnp.sum((topk[:, 0] == y) * m),
        "correct5": jnp.sum(jnp.any(topk == y[:, None], axis=-1) * m),
        "count": jnp.sum(m),
    }


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# --------------------------------------------------------------------------------------------
# The run


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop polls, so the state can be saved between steps."""

    def __init__(self):
        self.set = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.set = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def setup_compilation_cache(config) -> None:
    if config.compilation_cache_dir:
        path = os.path.expanduser(config.compilation_cache_dir)
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@dataclasses.dataclass
class RunResult:
    status: str  # finished | preempted | halted
    step: int
    metrics: dict[str, float]


class Setup:
    """Everything a run needs, built from its config: data source, mesh, schedule, model,
    optimizer and the jitted steps. Nothing is written anywhere; ``evaluate`` uses this alone."""

    def __init__(self, config: ml_collections.ConfigDict):
        config_lib.validate(config)
        self.config = config
        self.is_main = jax.process_index() == 0
        setup_compilation_cache(config)

        self.mesh = sharding.make_mesh(config.mesh_axis)
        # Data first: a missing data set must fail before anything is compiled.
        self.source = sources.make_source(config, self.mesh)
        self.info = self.source.info
        devices = self.mesh.devices.size
        cap = -(-self.info.num_test // devices) * devices
        if config.eval_batch_size > cap:
            # Larger evaluation batches would only hold padding: bound the memory to what the
            # test split needs.
            log.warning("eval_batch_size=%d is larger than the test split (%d images); using %d",
                        config.eval_batch_size, self.info.num_test, cap)
            config.eval_batch_size = cap
        try:
            sharding.check_divisible("batch_size", config.batch_size, self.mesh)
            sharding.check_divisible("eval_batch_size", config.eval_batch_size, self.mesh)
        except ValueError as e:
            raise config_lib.ConfigError(f"config.{e}") from None
        self.sched = config_lib.derive(config, self.info.num_train)

        self.model = config_lib.build_model(config, self.info.num_classes)
        config_lib.check_model(config, self.model, self.info.image_shape)
        self.schedule = make_schedule(config, self.sched)
        self.tx = make_optimizer(config, self.schedule)
        d = config.data
        self.ctx = StepContext(
            model=self.model, tx=self.tx, schedule=self.schedule, mean=tuple(self.info.mean),
            std=tuple(self.info.std), augment=bool(d.augment), pad=int(d.pad), flip=bool(d.flip),
            seed=int(config.seed), num_classes=self.info.num_classes,
            resize=None if config.data.dataset in STREAMED_DATASETS else config.data.get("resize"),
        )
        self._train_step = self.source.train_step(self.ctx, functools.partial(train_step_on_batch, self.ctx))
        self._eval_step = self.source.eval_step(self.ctx, functools.partial(eval_on_batch, self.ctx))
        self._all_finite = jax.jit(all_finite)
        self.batch_sharding = sharding.batch_sharded(self.mesh)
        self.replicated = sharding.replicated(self.mesh)
        self.init_report: dict[str, Any] | None = None  # what config.init_from loaded

    def meta(self, state, epoch: float) -> dict[str, Any]:
        return {
            "step": int(jax.device_get(state.step)),
            "epoch": epoch,
            "model": self.config.model.to_dict(),
            "num_classes": self.info.num_classes,
            "param_shapes": checkpointing.param_shapes(state.params),
        }

    def init_state(self) -> TrainState:
        return create_train_state(self.model, self.tx, self.info.image_shape, self.config.seed, self.mesh)

    def evaluate(self, state) -> dict[str, float]:
        """Test loss, top-1 and top-5 error over the whole test split."""
        totals = None
        for args in self.source.eval_batches():
            out = self._eval_step(state, *args)
            totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        t = sharding.to_host(totals)
        n = float(t["count"])
        return {
            "test_loss": float(t["loss_sum"]) / n,
            "test_error": 100.0 * (1.0 - float(t["correct1"]) / n),
            "test_top5_error": 100.0 * (1.0 - float(t["correct5"]) / n),
            "test_count": int(n),
        }

    def restore(self, ckpts: checkpointing.Checkpoints, *, which: str = "latest", step: int | None = None,
                items: dict[str, Any] | None = None) -> tuple[TrainState, dict[str, Any]] | None:
        """The newest intact checkpoint (or ``step``) of ``ckpts`` for this setup's model."""
        template = jax.eval_shape(self.init_state)
        return ckpts.restore(abstract_state(template, self.mesh), which=which, step=step,
                             shapes=checkpointing.param_shapes(template.params), items=items)


class Trainer(Setup):
    """A :class:`Setup` and its workdir; ``run()`` trains and evaluates, resuming by itself."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                 accept_config_changes: Sequence[str] = (), lock_lease_seconds: float = LEASE_SECONDS):
        try:  # a bucket that cannot be used stops the run before the data is even read
            storage.check_available(workdir, "--workdir")
        except storage.StorageError as e:
            raise WorkdirError(str(e)) from None
        super().__init__(config)
        self.workdir = storage.path(workdir)
        self.lock_lease_seconds = lock_lease_seconds
        self._lock = None
        # Fields whose change a resumed run accepts on purpose (or "all"): --accept_config_changes.
        self.accepted = tuple(accept_config_changes)
        self.config_changes: dict[str, tuple[Any, Any]] = {}

    def restore_or_init(self, ckpts: checkpointing.Checkpoints, initial=None) -> tuple[TrainState, bool]:
        """The newest checkpoint of the workdir, else a fresh state, started from ``initial``
        (:meth:`initial_weights`) when given."""
        restored = self.restore(ckpts, items=self.source.restore_items())
        if restored is None:
            state = self.init_state()
            if initial is not None:
                params, batch_stats, reinitialised = initial
                params = dict(params, **{k: state.params[k] for k in reinitialised})
                # The optimizer state of SGD and AdamW at step 0 does not depend on the values.
                state = state.replace(params=jax.device_put(params, self.replicated),
                                      batch_stats=jax.device_put(batch_stats, self.replicated))
            return state, False
        ckpts.complete_best(*restored)
        return restored[0], True

    def initial_weights(self):
        """``config.init_from``'s parameters and BatchNorm statistics for this run's model:
        (params, batch_stats, names of the reinitialised modules). The classifier (``head``) is
        reinitialised when the number of classes differs; any other difference stops the run."""
        src = self.config.init_from
        try:
            params, batch_stats, meta = checkpointing.read_weights(src)
        except checkpointing.CheckpointError as e:
            raise config_lib.ConfigError(f"config.init_from={src!r}: {e}") from None
        abstract = jax.eval_shape(functools.partial(
            init_variables, self.model, self.info.image_shape, self.config.seed))
        shapes = checkpointing.param_shapes
        problems = checkpointing.compare_shapes(
            {**shapes(params), **{f"[stats]{k}": v for k, v in shapes(batch_stats).items()}},
            {**shapes(abstract["params"]),
             **{f"[stats]{k}": v for k, v in shapes(abstract.get("batch_stats", {})).items()}})
        classes = meta.get("num_classes")
        head = [p for p in problems if p.startswith("['head']")]
        if len(head) < len(problems) or (head and classes == self.info.num_classes):
            other = [p for p in problems if not p.startswith("['head']")] or head
            raise config_lib.ConfigError(
                f"config.init_from={src!r} holds a checkpoint of another model "
                f"({meta.get('model', {}).get('name', '?')}) than config.model "
                f"({self.config.model.name}): {len(problems)} variable(s) differ, e.g. "
                f"{other[0].replace('config', 'this run')}. Nothing was written."
            )
        reinitialised = ("head",) if head else ()
        if head:
            log.warning("init_from %s: reinitialised the classifier %s (%s classes there, %d here)",
                        src, ", ".join(head), classes, self.info.num_classes)
        self.init_report = {"init_from": str(src), "reinitialised": list(reinitialised)}
        return params, batch_stats, reinitialised

    # ---- the loop

    def run(self) -> RunResult:
        """Trains into the workdir, resuming from its newest checkpoint. Process 0 holds the
        workdir's lock throughout; a storage error (a full disk) stops the run with
        :class:`~dnjax.workdir.WorkdirError`, the checkpoints already committed intact."""
        created = []  # directories this run makes, deepest first: removed again if it writes nothing
        if self.is_main:
            if not storage.is_remote(self.workdir):  # an object store has no directories to leave
                here = storage.local(self.workdir)
                created = [d for d in (here, *here.parents) if not d.exists()]
            check_writable(self.workdir)
        done = False
        self._lock = lock_for(self.workdir, self.lock_lease_seconds) if self.is_main else None
        try:
            with self._lock if self._lock is not None else contextlib.nullcontext():
                try:
                    result = self._run()
                    done = True
                    return result
                except Exception as e:
                    cause = write_error(e)
                    if cause is None and not isinstance(e, storage.StorageError):
                        raise
                    steps = checkpointing.committed_steps(self.workdir)
                    kept = (f"The checkpoints up to step {steps[-1]} are intact" if steps
                            else "No checkpoint had been committed")
                    what = (f"{cause.strerror or cause}{f' ({cause.filename})' if cause.filename else ''}"
                            if cause is not None else str(e))
                    raise WorkdirError(
                        f"Cannot write to --workdir={self.workdir}: {what}. {kept}; free space (or "
                        "fix the storage) and rerun the same command to resume."
                    ) from e
        finally:
            for d in created if not done else ():
                try:
                    d.rmdir()  # only if empty: a run stopped before writing leaves nothing behind
                except OSError:
                    break

    def check_resume_config(self) -> bool:
        """Compares the config with the one the workdir's run saved; returns whether that run had
        finished. Changes that would alter the trajectory are refused (see config_lib)."""
        saved_path = self.workdir / "config.json"
        finals = [r for r in logs.records(self.workdir, "final")]
        steps = checkpointing.committed_steps(self.workdir)
        finished = bool(finals and steps and finals[-1]["step"] == steps[-1])
        if not saved_path.exists():
            log.warning("%s is missing: the resumed run's config cannot be compared with its own", saved_path)
            return finished
        try:
            saved = json.loads(saved_path.read_text())
        except (OSError, ValueError) as e:
            raise checkpointing.CheckpointError(f"{saved_path} is unreadable ({e}); restore it, or use a "
                                                "fresh --workdir. Nothing was changed.") from None
        changes = config_lib.config_changes(saved, self.config)
        allowed, refused = config_lib.resume_policy(changes, finished=finished, accepted=self.accepted)
        if refused:
            raise checkpointing.CheckpointError(
                f"--workdir={self.workdir} holds a run with a different config, and continuing it with "
                f"this one would change what it trains:\n{config_lib.format_changes(refused)}\n"
                "Use a fresh --workdir for this config, rerun with the saved one "
                f"({saved_path}), or accept the change on purpose with "
                f"--accept_config_changes={','.join(refused)}. Nothing in the workdir was changed."
            )
        if allowed:
            log.warning("Continuing %s with changed settings:\n%s", self.workdir, config_lib.format_changes(allowed))
        self.config_changes = allowed
        return finished

    def _final_record(self) -> dict[str, Any] | None:
        """The log's final record of a run that already ended at this config's last step."""
        final = [r for r in logs.records(self.workdir, "final") if r["step"] == self.sched.total_steps]
        if not final or self.sched.total_steps not in checkpointing.committed_steps(self.workdir):
            return None
        return final[-1]

    def _run(self) -> RunResult:
        cfg, sched = self.config, self.sched
        self.config_changes = {}
        final = None
        if checkpointing.has_checkpoints(self.workdir):
            self.check_resume_config()
            final = self._final_record()
        # Read before anything is written: weights that do not fit stop the run untouched.
        initial = None
        if cfg.init_from and not checkpointing.has_checkpoints(self.workdir):
            initial = self.initial_weights()
        ckpts = checkpointing.Checkpoints(self.workdir, keep=cfg.keep_checkpoints, training=True)
        try:
            state, resumed = self.restore_or_init(ckpts, initial)
        except BaseException:
            _close_quietly(ckpts)
            raise
        if resumed and final is not None and int(jax.device_get(state.step)) == sched.total_steps:
            # Finished, and its last checkpoint read back intact: leave the run exactly as it is.
            # (A damaged one was skipped above: the run then trains to the end again.)
            ckpts.close()
            log.info("%s already finished at step %d; nothing to do", self.workdir, sched.total_steps)
            skip = ("type", "step", "time", "epoch")
            return RunResult("finished", sched.total_steps, {k: v for k, v in final.items() if k not in skip})
        metrics_log = None
        try:
            # Written only once the workdir is known to hold this model (or nothing yet).
            if self.is_main:
                storage.write_whole(self.workdir / "config.json", cfg.to_json_best_effort(indent=2))
            start = int(jax.device_get(state.step))
            metrics_log = logs.MetricsLog(self.workdir, resume_step=start if resumed else None,
                                          enabled=self.is_main)
            if resumed:
                log.info("Resumed from %s at step %d", self.workdir / "checkpoints", start)
                metrics_log.write("event", start, event="resumed")
                if self.config_changes:
                    metrics_log.write("event", start, event="config_changed",
                                      changes={k: list(v) for k, v in self.config_changes.items()})
            else:
                metrics_log.write(
                    "event", 0, event="started", model=cfg.model.name,
                    params=int(sum(x.size for x in jax.tree.leaves(state.params))),
                    steps_per_epoch=sched.steps_per_epoch, total_steps=sched.total_steps,
                    devices=jax.device_count(), processes=jax.process_count(),
                    **(self.init_report or {}),
                )
            result = self._loop(state, start, ckpts, metrics_log)
        except BaseException as e:
            storage_failed = write_error(e) is not None or isinstance(e, storage.StorageError)
            if metrics_log is not None and storage_failed:
                _close_quietly(_Discard(metrics_log))  # the store cannot take the rest
            else:
                _close_quietly(metrics_log)  # the first error is the one to report
            if not storage_failed:
                _close_quietly(ckpts)
            else:
                ckpts.abandon()
            raise
        metrics_log.close()
        ckpts.close()
        return result

    def _loop(self, state, start, ckpts, metrics_log) -> RunResult:
        cfg, sched = self.config, self.sched
        batch = cfg.batch_size
        bar = None
        if self.is_main and cfg.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=sched.total_steps, initial=start, unit="step", dynamic_ncols=True)
        last_eval: dict[str, float] = {}
        t_last, step_last = time.perf_counter(), start
        metrics = None
        step = start
        batches = self.source.train_batches(start)
        profiler = profiling.StepProfiler(cfg.profile_steps, metrics_log.tensorboard_dir,
                                          enabled=self.is_main)
        lock = self._lock
        with _SigtermFlag() as sigterm, profiler:
            while step < sched.total_steps:
                profiler.before(step + 1)
                state, metrics = self._train_step(state, *next(batches))
                profiler.after(step + 1, state)
                step += 1
                if bar is not None:
                    bar.update(1)
                epoch = step / sched.steps_per_epoch
                do_eval = step % sched.eval_every == 0 or step == sched.total_steps
                do_ckpt = step % sched.checkpoint_every == 0 or step == sched.total_steps
                if step % cfg.log_every_steps == 0 or do_eval or do_ckpt:
                    m = {k: float(v) for k, v in sharding.to_host(metrics).items()}
                    if not math.isfinite(m["loss"]) or not bool(self._all_finite(state.params)):
                        what = f"training loss ({m['loss']})" if not math.isfinite(m["loss"]) else "parameters"
                        newest = ckpts.latest.latest_step()
                        kept = (f"The newest checkpoint (step {newest}) predates it and is kept."
                                if newest is not None else "No checkpoint was saved before it.")
                        raise NonFiniteLossError(
                            f"Non-finite {what} at step {step} (epoch {epoch:.2f}; checked every "
                            f"{cfg.log_every_steps} steps); stopping. {kept} Lower "
                            "--config.optim.learning_rate or check the data."
                        )
                    now = time.perf_counter()
                    m["img_per_s"] = (step - step_last) * batch / max(now - t_last, 1e-9)
                    t_last, step_last = now, step
                    metrics_log.write("train", step, epoch=round(epoch, 4), **m)
                    if bar is not None:
                        bar.set_postfix(loss=f"{m['loss']:.3f}", img_s=f"{m['img_per_s']:.0f}")
                if do_eval:
                    last_eval = self.evaluate(state)
                    metrics_log.write("eval", step, epoch=round(epoch, 4), **last_eval)
                    msg = (f"step {step} epoch {epoch:.2f}: test error {last_eval['test_error']:.2f}% "
                           f"(top-5 {last_eval['test_top5_error']:.2f}%), test loss {last_eval['test_loss']:.4f}")
                    bar.write(msg) if bar is not None else log.info(msg)
                if do_ckpt:
                    if lock is not None:
                        lock.check()  # another run took the workdir over: save nothing
                    metrics_log.sync()  # every committed checkpoint has its records in the workdir
                    meta = self.meta(state, epoch)
                    if do_eval:  # lets a resumed run redo a best save that a crash cut short
                        meta["test_error"] = last_eval["test_error"]
                    ckpts.save(step, state, meta, force=True, items=self.source.save_items())
                    if do_eval:
                        ckpts.save_best(step, state, meta, last_eval["test_error"])
                halt = step == cfg.halt_after_steps and step < sched.total_steps
                if sigterm.set or halt or ckpts.reached_preemption(step):
                    if not do_ckpt:
                        metrics_log.sync()
                        ckpts.save(step, state, self.meta(state, epoch), force=True,
                                   items=self.source.save_items())
                    ckpts.wait()
                    why = "halted" if halt and not sigterm.set else "preempted"
                    metrics_log.write("event", step, event=why)
                    msg = (f"{'Halted (halt_after_steps)' if why == 'halted' else 'Preempted (SIGTERM)'} "
                           f"at step {step}: checkpoint saved to {self.workdir / 'checkpoints'}; "
                           "rerun the same command to resume.")
                    if bar is not None:
                        bar.close()
                    log.warning(msg)
                    return RunResult(why, step, last_eval)
        if bar is not None:
            bar.close()
        if not last_eval:  # resumed at the very end: evaluate what was restored
            last_eval = self.evaluate(state)
        final = dict(last_eval)
        if metrics is not None:
            final["train_loss"] = float(sharding.to_host(metrics)["loss"])
        metrics_log.write("final", step, epoch=round(step / sched.steps_per_epoch, 4), **final)
        self.final_state = state
        return RunResult("finished", step, final)


def _close_quietly(*closables) -> None:
    """Closes what a failing run opened, logging (not raising) what fails in turn."""
    for c in closables:
        if c is None:
            continue
        try:
            c.close()
        except Exception as e:  # noqa: BLE001 - the error being raised already says what went wrong
            log.debug("While stopping, closing %s failed too: %s", type(c).__name__, str(e).splitlines()[0] if str(e) else e)


class _Discard:
    """Closes a metrics log without its last upload."""

    def __init__(self, metrics_log):
        self.metrics_log = metrics_log

    def close(self) -> None:
        self.metrics_log.discard()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       accept_config_changes: Sequence[str] = (),
                       lock_lease_seconds: float = LEASE_SECONDS) -> RunResult:
    return Trainer(config, workdir, accept_config_changes, lock_lease_seconds).run()
