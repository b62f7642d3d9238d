"""Every knob of a run, with the paper's CIFAR recipe as the defaults.

The experiment configs (``configs/*.py``, through :mod:`dnjax.recipes`) start from this and
override a few fields. Any field can be overridden on the command line:
``--config.optim.weight_decay=5e-4``. Values derived from others (steps per epoch, schedule
boundaries) are computed when the run starts, so overrides carry through.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from dnjax import models

DEFAULT_MODEL = "densenet_bc100_k12"


def model_config(name: str) -> ml_collections.ConfigDict:
    """``config.model`` for zoo network ``name``: its name and every field of its family's module
    and builders, each None (keep the zoo entry's value) and typed for the command line.

    DenseNets have growth_rate, bottleneck, dropout_rate, activation, memory_efficient, ...;
    ResNets block, shortcut, widths, stem_features, ...; VGGs their stages; the depth-based
    builders ``depth``. The name can change within the family on the command line; a field the
    chosen network does not take is refused when set (``python -m dnjax.models --fields --only
    NAME`` lists a network's fields).
    """
    if name not in models.ZOO:
        raise ValueError(f"model={name!r} is unknown; valid names are: {', '.join(sorted(models.ZOO))}")
    m = ml_collections.ConfigDict()
    m.name = name
    for field, kind in models.family_field_types(models.family(name)).items():
        m[field] = placeholder(kind)
    return m


def get_config(model: str = DEFAULT_MODEL):
    c = ml_collections.ConfigDict()

    # The network: a zoo name (python -m dnjax.models lists them) and the fields of its module.
    # Fields left at None keep the zoo entry's value.
    c.model = model_config(model)

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "cifar10"  # one of dnjax.data.choices.DATASETS
    c.data.data_dir = placeholder(str)  # tfds data dir; default: $TFDS_DATA_DIR or ~/tensorflow_datasets
    # npz data: a file, several separated by commas, or a glob (parts concatenated in that order),
    # each with arrays 'image' (uint8 NHWC) and the label array named by npz_label.
    c.data.npz_train = placeholder(str)
    c.data.npz_test = placeholder(str)
    c.data.npz_label = "label"  # e.g. 'coarse_label' for CIFAR-100's 20 superclasses
    c.data.num_classes = placeholder(int)  # None: from the data set
    c.data.normalization = "mean_std"  # choices.NORMALIZATIONS: mean_std (CIFAR) | scale (pixels / 255, SVHN)
    # | imagenet (ImageNet's mean and std, for ImageNet weights)
    c.data.resize = placeholder(int)  # in-memory data: enlarge to resize x resize on the device
    c.data.augment = True  # the "+" of C10+: zero-pad random crop and horizontal flip
    c.data.pad = 4
    c.data.flip = True
    c.data.image_size = 224  # ImageNet crop size
    c.data.workers = 0  # grain decoding processes per host for streamed (ImageNet) data
    c.data.train_limit = placeholder(int)  # use only the first N training images (smoke runs)
    c.data.test_limit = placeholder(int)
    # Train on a class-balanced subset: this fraction of every class (None: all), drawn with
    # subset_seed (None: 0); for one seed a smaller fraction's subset lies inside a larger one's.
    # Both None by default, so runs saved before these fields existed resume unchanged.
    c.data.train_fraction = placeholder(float)
    c.data.subset_seed = placeholder(int)

    # A workdir (a converted one from python -m dnjax.convert, or any run's) whose newest
    # checkpoint's parameters and BatchNorm statistics start this run; the classifier is
    # reinitialised when the number of classes differs. A run that resumes ignores it.
    c.init_from = placeholder(str)

    c.seed = 0
    c.batch_size = 64  # global, over all devices and processes
    c.eval_batch_size = 500
    c.num_epochs = 300.0
    c.num_train_steps = -1  # > 0 overrides num_epochs (smoke runs, tests)
    # > 0: checkpoint and stop when the run reaches this step; a rerun continues past it. For jobs
    # with a wall-clock limit that train a long schedule in slices.
    c.halt_after_steps = -1

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"  # sgd | adamw
    c.optim.learning_rate = 0.1
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 1e-4  # coupled L2 on all parameters, as in Torch's SGD
    c.optim.schedule = "piecewise"  # piecewise | cosine | constant
    c.optim.decay_at = (0.5, 0.75)  # fractions of training for the piecewise schedule
    c.optim.decay_factor = 0.1
    c.optim.warmup_epochs = 0.0
    c.optim.warmup_factor = 0.1  # warm-up starts at learning_rate * warmup_factor

    c.dtype = "float32"  # compute dtype, one of choices.DTYPES (parameters stay float32)

    c.eval_every_epochs = 1.0
    c.log_every_steps = 50
    c.checkpoint_every_epochs = 1.0
    c.keep_checkpoints = 3
    c.progress_bar = True

    # Devices: a 1-D data-parallel mesh over every device of every process.
    c.mesh_axis = "data"
    c.compilation_cache_dir = "~/.cache/dnjax/jax"  # '' disables JAX's persistent cache
    # "A,B": a jax.profiler trace of steps A..B (inclusive) in workdir/profile, for TensorBoard's
    # profile plugin; "" traces nothing.
    c.profile_steps = ""
    return c
