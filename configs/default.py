"""Every knob of a run, with the DenseNet paper's CIFAR recipe as the defaults.

The other config files start from this one and set what their recipe changes. Any field can be
overridden on the command line, and values derived from others (steps per epoch, the
learning-rate drops) are computed when the run starts, so overrides carry through:

    python -m dnjax.main --config=configs/default.py --workdir=runs/x --config.optim.weight_decay=5e-4

The argument names the network (default densenet_bc100_k12): ``configs/default.py:resnet110``.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config(arg="densenet_bc100_k12"):
    c = ml_collections.ConfigDict()

    # The network: a zoo name (python -m dnjax.models lists them) and the fields of its module that
    # this run sets; every other field keeps the zoo entry's value. Any field of the chosen network
    # can be set on the command line, e.g. --config.model.growth_rate=24 (python -m dnjax.models
    # --fields --only NAME lists them); one it does not take is refused, naming it.
    c.model = dict(name=arg or "densenet_bc100_k12")

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "cifar10"  # one of dnjax.data.choices.DATASETS
    c.data.data_dir = placeholder(str)  # tfds data dir; default: $TFDS_DATA_DIR or ~/tensorflow_datasets
    # npz data: a file, several separated by commas, or a glob (parts concatenated in that order),
    # each with arrays 'image' (uint8 NHWC) and the label array named by npz_label.
    c.data.npz_train = placeholder(str)
    c.data.npz_test = placeholder(str)
    c.data.npz_label = "label"  # e.g. 'coarse_label' for CIFAR-100's 20 superclasses
    c.data.num_classes = placeholder(int)  # None: from the data set
    c.data.normalization = "mean_std"  # mean_std (CIFAR) | scale (pixels / 255, SVHN)
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

    c.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)

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
