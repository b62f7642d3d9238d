"""Builds and times the real train step of a config, and the same step of the PyTorch reference.

The JAX step is the trainer's own (``train.train_step_on_batch`` with the trainer's optimizer and
state), jitted with the state donated, fed a synthetic batch of the config's image shape. What is
measured:

* compile time: ``compile`` of that step (a persistent-cache hit when the cache is on), and
  separately the time to trace it (``lower``);
* FLOPs per image: the model's forward pass (2 x MACs, counted on the module) and the whole train
  step as XLA's cost analysis counts it (forward, backward, recompute, optimizer);
* memory: ``temp_size_in_bytes`` of the compiled step, the activations and scratch it needs on top
  of its arguments (on CPU the meaningful figure); on a GPU also the allocator's peak;
* throughput: the median of individually timed steps after warm-up, each step synchronised.

A PyTorch step is timed in the same loop, alternating with the JAX one, so that both see the same
load on a shared machine and their ratio is meaningful even where the absolute figures are not.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dnjax import config_files, config_lib, models, sharding, train
from dnjax.benchmark import accelerator
from dnjax.models import summary

# The recipe whose optimizer, data settings and dtype the benchmarks' steps use unless told
# otherwise: DenseNet-BC-100 k=12 on C10+ (SGD, Nesterov momentum 0.9, weight decay 1e-4). A
# config-file spec, PATH[:ARG] as ``--config`` takes it, PATH relative to the current directory
# (the library never imports configs/, so the benchmarks are pointed at the file).
RECIPE = "configs/cifar_densenet.py:densenet_bc100_k12,c10+"


def recipe(spec: str = RECIPE) -> ml_collections.ConfigDict:
    """The config of a config-file spec; ConfigError naming the spec and the fix if it is not one."""
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
        raise config_lib.ConfigError(
            f"--config={spec}: {path} is not a file; run from the repository root or give the path "
            f"of the config file, e.g. --config=/path/to/dnjax/{RECIPE}")
    return config_files.load_config_file(spec)


# The model fields a recipe sets for its data set rather than for its network (C10 and C100:
# dropout 0.2; with augmentation: none).
DATASET_MODEL_FIELDS = ("dropout_rate",)


def with_model(config: ml_collections.ConfigDict, name: str, **fields: Any) -> ml_collections.ConfigDict:
    """A copy of ``config`` that trains zoo network ``name`` with ``fields`` set.

    For the recipe's own network every model field of the recipe is kept; for another one only
    those of ``DATASET_MODEL_FIELDS`` that it has (a ResNet has no dropout), so no architecture
    field of the recipe's network (a depth, a growth rate) carries over to a different one."""
    c = config.copy_and_resolve_references()
    valid = models.field_types(name)
    carried = [k for k in c.model if k != "name"] if name == c.model.name else DATASET_MODEL_FIELDS
    kept = {k: c.model[k] for k in carried if k in valid and c.model.get(k) is not None}
    c.model = ml_collections.ConfigDict({"name": name, **kept, **fields})
    return c


def num_classes(config: ml_collections.ConfigDict) -> int:
    """The class count of the config's data set, for the synthetic labels."""
    from dnjax.data import choices

    return choices.num_classes(config.data)


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    if config.data.dataset == "imagenet2012":
        return (config.data.image_size, config.data.image_size, 3)
    return models.input_shape(config.model.name)


def device_name() -> str:
    """What the steps run on, e.g. 'cpu: AMD EPYC (2 cores)' or 'gpu: NVIDIA H200'."""
    d = jax.devices()[0]
    if d.platform == "cpu":
        cpu = platform.processor() or "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        return f"cpu: {cpu} ({os.cpu_count()} cores)"
    return f"{d.platform}: {d.device_kind}" + (f" x{jax.device_count()}" if jax.device_count() > 1 else "")


def today() -> str:
    return datetime.date.today().isoformat()


@dataclasses.dataclass
class Measurement:
    """One row of the benchmark table."""

    framework: str
    model: str
    batch: int
    dtype: str
    memory_efficient: bool
    img_per_s: float | None = None
    step_ms: float | None = None
    step_ms_min: float | None = None
    cpu_ms: float | None = None  # median CPU time of a step, all threads of the process
    step_ms_all: list[float] = dataclasses.field(default_factory=list)
    lower_s: float | None = None  # tracing the step to HLO
    compile_s: float | None = None  # XLA compilation (a persistent-cache hit: loading it)
    model_gflops_per_img: float | None = None  # forward pass, 2 x MACs
    step_gflops_per_img: float | None = None  # the whole train step, as XLA counts it
    temp_mib: float | None = None  # compiled step's temporaries (JAX)
    peak_mib: float | None = None  # allocator peak during a step (GPU)
    # Device memory of one step: JAX, the compiled step's arguments + unaliased outputs +
    # temporaries (XLA's buffer assignment); PyTorch, the allocator's peak over one step run alone.
    step_mib: float | None = None
    mfu: float | None = None  # model FLOPs (3 x forward) per second over the chip's peak
    peak_tflops: float | None = None  # the peak used for mfu
    params: int | None = None
    device: str = ""
    date: str = ""
    note: str = ""

    def record_steps(self, seconds: list[float], cpu_seconds: list[float]) -> None:
        self.step_ms_all = [round(1e3 * s, 3) for s in seconds]
        med = statistics.median(seconds)
        self.step_ms = 1e3 * med
        self.step_ms_min = 1e3 * min(seconds)
        self.cpu_ms = 1e3 * statistics.median(cpu_seconds)
        self.img_per_s = self.batch / med


# --------------------------------------------------------------------------------------------
# JAX


@dataclasses.dataclass
class JaxStep:
    """A compiled train step with its live state and batch; ``run()`` does one step, synchronised."""

    compiled: Any
    state: Any
    x: jax.Array
    y: jax.Array
    measurement: Measurement

    def run(self) -> None:
        self.state, metrics = self.compiled(self.state, self.x, self.y)
        jax.block_until_ready(metrics["loss"])


def build_model(config: ml_collections.ConfigDict):
    config_lib.validate(config)
    return config_lib.build_model(config, num_classes(config))


def jax_step(config: ml_collections.ConfigDict, *, compile_only: bool = False,
             compiler_options: dict | None = None) -> JaxStep:
    """Builds, compiles and measures (without running) the trainer's step for ``config``.

    With ``compile_only`` no state is materialised: the step is lowered from abstract values,
    which is how models too large to run on this machine are still measured for memory.
    ``compiler_options`` (XLA debug options for this executable only) let two settings of an XLA
    flag be timed side by side in one process.
    """
    model = build_model(config)
    shape = image_shape(config)
    batch = config.batch_size
    mesh = sharding.make_mesh(config.mesh_axis)
    schedule = optax.constant_schedule(config.optim.learning_rate)
    tx = train.make_optimizer(config, schedule)
    ctx = train.StepContext(
        model=model, tx=tx, schedule=schedule,
        mean=(0.0,) * shape[-1], std=(1.0,) * shape[-1], augment=False, pad=0, flip=False,
        seed=int(config.seed), num_classes=num_classes(config),
    )
    step = jax.jit(functools.partial(train.train_step_on_batch, ctx), donate_argnums=(0,))
    bat = sharding.batch_sharded(mesh)
    if compile_only:
        init = lambda: train.create_train_state(model, tx, shape, config.seed, mesh)
        state = train.abstract_state(jax.eval_shape(init), mesh)
        x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32, sharding=bat)
        y = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=bat)
    else:
        state = train.create_train_state(model, tx, shape, config.seed, mesh)
        rng = np.random.default_rng(config.seed)
        x = sharding.global_array(rng.standard_normal((batch, *shape), np.float32), bat)
        y = sharding.global_array(rng.integers(0, num_classes(config), batch, dtype=np.int32), bat)

    t0 = time.perf_counter()
    lowered = step.lower(state, x, y)
    t1 = time.perf_counter()
    compiled = lowered.compile(compiler_options=compiler_options)
    compile_s = time.perf_counter() - t1

    variables = summary.abstract_variables(model, shape)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    m = Measurement(
        framework="jax",
        model=config.model.name,
        batch=batch,
        dtype=config.dtype,
        memory_efficient=bool(getattr(model, "memory_efficient", False)),
        lower_s=t1 - t0,
        compile_s=compile_s,
        model_gflops_per_img=2 * summary.count_macs(model, shape, variables) / 1e9,
        step_gflops_per_img=float(cost.get("flops", 0.0)) / batch / 1e9 if cost else None,
        temp_mib=mem.temp_size_in_bytes / 2**20 if mem is not None else None,
        step_mib=accelerator.compiled_step_mib(mem),
        params=summary.count_params(variables),
        device=device_name(),
        date=today(),
    )
    return JaxStep(compiled, state, x, y, m)


def jax_peak_mib() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return peak / 2**20 if peak else None


# --------------------------------------------------------------------------------------------
# PyTorch


@dataclasses.dataclass
class TorchStep:
    run: Callable[[], None]
    measurement: Measurement
    reset_peak: Callable[[], None]
    peak_mib: Callable[[], float | None]


def torch_step(config: ml_collections.ConfigDict, *, channels_last: bool = True,
               device: str | None = None, compile: bool = False) -> TorchStep:
    """The same network, batch and optimizer in PyTorch, one step per ``run()``: eager, or with the
    model under ``torch.compile`` (compiled by the first ``run()``). On a GPU cuDNN picks its
    convolution algorithms by timing them (``cudnn.benchmark``), as a tuned PyTorch run would."""
    import torch
    import torch.nn.functional as F

    from dnjax.benchmark import torch_reference

    flax_model = build_model(config)
    shape = image_shape(config)
    batch = config.batch_size
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(config.seed)
    model = torch_reference.from_flax(flax_model).to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    model.train()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    opt_params = model.parameters()
    if compile:
        model = torch.compile(model)
    o = config.optim
    if o.name == "sgd":
        opt = torch.optim.SGD(opt_params, lr=o.learning_rate, momentum=o.momentum,
                              nesterov=o.nesterov, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.AdamW(opt_params, lr=o.learning_rate, betas=(o.momentum, 0.999),
                                weight_decay=o.weight_decay)
    g = torch.Generator().manual_seed(config.seed)
    x = torch.randn(batch, shape[2], shape[0], shape[1], generator=g).to(dev).to(memory_format=fmt)
    y = torch.randint(0, num_classes(config), (batch,), generator=g).to(dev)
    amp = config.dtype != "float32"
    amp_dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float16
    cuda = dev.type == "cuda"

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        else:
            loss.item()

    def reset_peak() -> None:
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_mib() -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if cuda else None

    if dev.type == "cpu":
        name = device_name() if jax.devices()[0].platform == "cpu" else "cpu"
    else:
        name = f"{dev.type}: {torch.cuda.get_device_name(dev)}"
    m = Measurement(
        framework=("torch.compile" if compile else "torch") + (" (channels_last)" if channels_last else ""),
        model=config.model.name,
        batch=batch,
        dtype=config.dtype,
        memory_efficient=bool(getattr(flax_model, "memory_efficient", False)),
        params=torch_reference.count_params(model),
        device=name,
        date=today(),
        note=f"torch {torch.__version__}, {torch.get_num_threads()} threads" if not cuda else f"torch {torch.__version__}",
    )
    return TorchStep(run, m, reset_peak, peak_mib)


# --------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], None]) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def time_side_by_side(
    runs: list[Callable[[], None]], steps: int, warmup: int = 2
) -> list[tuple[list[float], list[float]]]:
    """Times ``steps`` calls of each function, alternating between them (and which goes first).

    Returns, per function, the wall-clock and the process CPU seconds of every timed call.
    """
    for _ in range(warmup):
        for fn in runs:
            fn()
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in runs]
    order = list(range(len(runs)))
    for _ in range(steps):
        for i in order:
            wall, cpu = _timed(runs[i])
            times[i][0].append(wall)
            times[i][1].append(cpu)
        order.reverse()
    return times


def benchmark(config: ml_collections.ConfigDict, *, steps: int = 10, warmup: int = 2,
              with_torch: bool = False, channels_last: bool = True,
              both_modes: bool = False, variant_options: dict | None = None) -> list[Measurement]:
    """Measures the config's train step in JAX (and PyTorch), timing them side by side.

    ``both_modes`` times the plain and the memory-efficient mode of the model together;
    ``variant_options`` adds, for each JAX step, a copy compiled with these XLA options. Rows: the
    JAX steps first, PyTorch last."""
    configs = [config]
    if both_modes:
        configs = []
        for efficient in (False, True):
            c = config.copy_and_resolve_references()
            c.model.memory_efficient = efficient
            configs.append(c)
    steps_ = [jax_step(c) for c in configs]
    if variant_options:
        for c in configs:
            variant = jax_step(c, compiler_options=variant_options)
            variant.measurement.note = " ".join(f"{k}={v}" for k, v in variant_options.items())
            steps_.append(variant)
    runs = [js.run for js in steps_]
    rows = [js.measurement for js in steps_]
    ts = None
    if with_torch:
        ts = torch_step(config, channels_last=channels_last)
        runs.append(ts.run)
        rows.append(ts.measurement)
    if ts is not None:
        ts.reset_peak()
    for row, (wall, cpu) in zip(rows, time_side_by_side(runs, steps, warmup)):
        row.record_steps(wall, cpu)
    steps_[-1].measurement.peak_mib = jax_peak_mib()
    if ts is not None:
        ts.measurement.peak_mib = ts.peak_mib()
    return rows
