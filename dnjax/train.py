"""Training: the train state, optimizer and schedule, the pure steps, and ``train_and_evaluate``.

The state (parameters, BatchNorm statistics, optimizer state, step) is one pytree, created already
replicated over the mesh. ``train_step_on_batch`` and ``eval_on_batch`` are pure functions of a
prepared batch; :class:`Setup` jits them, each after its data source's ``prepare_*`` (gathering,
normalisation and augmentation of device-resident CIFAR-sized data happen inside the jitted step:
a step receives only the indices of its batch), with explicit shardings, the train step donating
the state. ``dnjax.evaluate`` uses the setup alone.

:func:`train_and_evaluate` is the loop; everything around it (the workdir's lock, resuming,
``init_from``, checkpoints, the metrics log, SIGTERM, storage errors) is the run's lifecycle,
:class:`dnjax.runtime.Run`. Batch indices and augmentation randomness are pure functions of
(seed, step), so a run restored from a checkpoint at step s trains on exactly the batches an
uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dnjax import config_lib, profiling, sharding
from dnjax.data import sources
from dnjax.data.choices import STREAMED_DATASETS
from dnjax.runtime import Run, RunResult, check_workdir, checkpoints as ckpt_lib, compilation
from dnjax.runtime.workdir import LEASE_SECONDS
from dnjax.storage import STORAGE_TIMEOUT_SECONDS

log = logging.getLogger("dnjax")


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
# The setup of a run


class Setup:
    """Everything a run needs, built from its config: data source, mesh, schedule, model,
    optimizer and the jitted steps. Nothing is written anywhere. ``self.config`` is the config
    completed with every field of its network (``config_lib.complete``), as the run saves it."""

    def __init__(self, config: ml_collections.ConfigDict):
        config_lib.validate(config)
        self.config = config = config_lib.complete(config)
        self.is_main = jax.process_index() == 0
        compilation.use_cache(config.compilation_cache_dir)

        self.mesh = sharding.make_mesh(config.mesh_axis)
        # Data first: a missing data set must fail before anything is compiled.
        self.source = sources.make_source(config, self.mesh)
        self.info = self.source.info
        self.eval_batch_size = _bounded_eval_batch(config.eval_batch_size, self.info.num_test,
                                                   self.mesh.devices.size)
        try:
            sharding.check_divisible("batch_size", config.batch_size, self.mesh)
            sharding.check_divisible("eval_batch_size", self.eval_batch_size, self.mesh)
        except ValueError as e:
            raise config_lib.ConfigError(f"config.{e}") from None
        self.sched = config_lib.derive(config, self.info.num_train)

        self.model = config_lib.build_model(config, self.info.num_classes, self.info.image_shape)
        self.schedule = make_schedule(config, self.sched)
        self.tx = make_optimizer(config, self.schedule)
        d = config.data
        self.ctx = StepContext(
            model=self.model, tx=self.tx, schedule=self.schedule, mean=tuple(self.info.mean),
            std=tuple(self.info.std), augment=bool(d.augment), pad=int(d.pad), flip=bool(d.flip),
            seed=int(config.seed), num_classes=self.info.num_classes,
            resize=None if config.data.dataset in STREAMED_DATASETS else config.data.resize,
        )
        self.train_step, self.eval_step = compile_steps(self.ctx, self.source)
        self._all_finite = jax.jit(all_finite)
        self.replicated = sharding.replicated(self.mesh)

    def meta(self, state, epoch: float) -> dict[str, Any]:
        return {
            "step": int(jax.device_get(state.step)),
            "epoch": epoch,
            "model": self.config.model.to_dict(),
            "num_classes": self.info.num_classes,
            "param_shapes": ckpt_lib.param_shapes(state.params),
        }

    def init_variables(self) -> dict[str, Any]:
        """The model's initial variables (parameters and BatchNorm statistics) for this run."""
        return init_variables(self.model, self.info.image_shape, self.config.seed)

    def init_state(self) -> TrainState:
        return create_train_state(self.model, self.tx, self.info.image_shape, self.config.seed, self.mesh)

    def evaluate(self, state) -> dict[str, float]:
        """Test loss, top-1 and top-5 error over the whole test split."""
        totals = None
        for args in self.source.eval_batches(self.eval_batch_size):
            out = self.eval_step(state, *args)
            totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        t = sharding.to_host(totals)
        n = float(t["count"])
        return {
            "test_loss": float(t["loss_sum"]) / n,
            "test_error": 100.0 * (1.0 - float(t["correct1"]) / n),
            "test_top5_error": 100.0 * (1.0 - float(t["correct5"]) / n),
            "test_count": int(n),
        }

    def finite(self, state, metrics: dict[str, float]) -> str | None:
        """What is not finite ('training loss (nan)', 'parameters'), or None."""
        if not math.isfinite(metrics["loss"]):
            return f"training loss ({metrics['loss']})"
        return None if bool(self._all_finite(state.params)) else "parameters"

    def restore(self, ckpts: ckpt_lib.Checkpoints, *, which: str = "latest", step: int | None = None,
                items: dict[str, Any] | None = None) -> tuple[TrainState, dict[str, Any]] | None:
        """The newest intact checkpoint (or ``step``) of ``ckpts`` for this setup's model."""
        template = jax.eval_shape(self.init_state)
        return ckpts.restore(abstract_state(template, self.mesh), which=which, step=step,
                             shapes=ckpt_lib.param_shapes(template.params), items=items)


def _bounded_eval_batch(requested: int, num_test: int, devices: int) -> int:
    """``eval_batch_size``, at most the test split rounded up to the device count: a larger batch
    would only hold padding."""
    cap = -(-num_test // devices) * devices
    if requested > cap:
        log.warning("eval_batch_size=%d is larger than the test split (%d images); using %d",
                    requested, num_test, cap)
        return cap
    return requested


def compile_steps(ctx: StepContext, source: sources.DataSource):
    """The jitted train and eval steps of ``source``'s batches: each prepares its batch (the
    source's pure ``prepare_*``) and runs the step on it; the train step donates the state."""

    def train_step(state, *batch):
        x, y = source.prepare_train(ctx, state.step, *batch)
        return train_step_on_batch(ctx, state, x, y)

    def eval_step(state, *batch):
        x, y, mask = source.prepare_eval(ctx, *batch)
        return eval_on_batch(ctx, state, x, y, mask)

    return (jax.jit(train_step, in_shardings=(None, *source.train_shardings), donate_argnums=(0,)),
            jax.jit(eval_step, in_shardings=(None, *source.eval_shardings)))


# --------------------------------------------------------------------------------------------
# The loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       accept_config_changes: Sequence[str] = (),
                       lock_lease_seconds: float = LEASE_SECONDS,
                       storage_timeout_seconds: float = STORAGE_TIMEOUT_SECONDS) -> RunResult:
    """Trains ``config`` into ``workdir`` and evaluates it, resuming from the workdir's newest
    checkpoint by itself (see :class:`dnjax.runtime.Run` for what happens around the loop)."""
    check_workdir(workdir)  # a bucket that cannot be used stops the run before the data is read
    setup = Setup(config)
    with Run(setup, workdir, accept_config_changes, lock_lease_seconds, storage_timeout_seconds) as run:
        if run.finished is not None:
            return run.finished
        return _train(setup, run)


def _train(setup: Setup, run: Run) -> RunResult:
    cfg, sched = setup.config, setup.sched
    state, step = run.state, run.start
    progress = _Progress(sched.total_steps, step, bar=cfg.progress_bar, enabled=setup.is_main)
    rate = _Throughput(step, cfg.batch_size)
    batches = setup.source.train_batches(step)
    last_eval: dict[str, float] = {}
    metrics = None
    with profiling.StepProfiler(cfg.profile_steps, run.tensorboard_dir, enabled=setup.is_main) as profiler:
        while step < sched.total_steps:
            profiler.before(step + 1)
            state, metrics = setup.train_step(state, *next(batches))
            profiler.after(step + 1, state)
            step += 1
            progress.update()
            epoch = step / sched.steps_per_epoch
            evaluate = step % sched.eval_every == 0 or step == sched.total_steps
            save = step % sched.checkpoint_every == 0 or step == sched.total_steps
            if step % cfg.log_every_steps == 0 or evaluate or save:
                m = _checked_metrics(setup, run, state, metrics, step, epoch)
                m["img_per_s"] = rate.since_last(step)
                run.log("train", step, epoch=round(epoch, 4), **m)
                progress.show(step, loss=f"{m['loss']:.3f}", img_s=f"{m['img_per_s']:.0f}")
            if evaluate:
                last_eval = setup.evaluate(state)
                run.log("eval", step, epoch=round(epoch, 4), **last_eval)
                progress.message(f"step {step} epoch {epoch:.2f}: test error {last_eval['test_error']:.2f}% "
                                 f"(top-5 {last_eval['test_top5_error']:.2f}%), test loss {last_eval['test_loss']:.4f}")
            if save:
                run.save(step, state, epoch, last_eval["test_error"] if evaluate else None)
            why = run.stop_reason(step)
            if why is not None:
                progress.close()
                return run.stop(why, step, state, epoch, saved=save, metrics=last_eval)
    progress.close()
    final = dict(last_eval or setup.evaluate(state))  # evaluated already unless resumed at the end
    if metrics is not None:
        final["train_loss"] = float(sharding.to_host(metrics)["loss"])
    return run.finish(step, state, final, step / sched.steps_per_epoch)


def _checked_metrics(setup: Setup, run: Run, state, metrics, step: int, epoch: float) -> dict[str, float]:
    """The step's metrics on the host; a non-finite loss or parameter stops the run, before the
    state can be checkpointed."""
    m = {k: float(v) for k, v in sharding.to_host(metrics).items()}
    bad = setup.finite(state, m)
    if bad is not None:
        newest = run.newest_checkpoint()
        kept = (f"The newest checkpoint (step {newest}) predates it and is kept."
                if newest is not None else "No checkpoint was saved before it.")
        raise NonFiniteLossError(
            f"Non-finite {bad} at step {step} (epoch {epoch:.2f}; checked every "
            f"{setup.config.log_every_steps} steps); stopping. {kept} Lower "
            "--config.optim.learning_rate or check the data."
        )
    return m


class _Throughput:
    """Images per second since the previous reading."""

    def __init__(self, step: int, batch: int):
        self.batch, self.step, self.time = batch, step, time.perf_counter()

    def since_last(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.step) * self.batch / max(now - self.time, 1e-9)
        self.step, self.time = step, now
        return rate


class _Progress:
    """A tqdm bar on process 0 (``config.progress_bar``); without one, a log line for each logged
    step and each message."""

    def __init__(self, total: int, initial: int, *, bar: bool, enabled: bool):
        self.bar, self.total, self.enabled = None, total, enabled
        if bar and enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, step: int, **values: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**values)
        elif self.enabled:
            log.info("step %d/%d: %s", step, self.total, ", ".join(f"{k} {v}" for k, v in values.items()))

    def message(self, text: str) -> None:
        self.bar.write(text) if self.bar is not None else log.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
