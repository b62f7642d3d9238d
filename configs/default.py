"""Every knob of a run, with the paper's CIFAR recipe as the defaults.

Experiment configs import this and override a few fields. Any field can be overridden on the
command line: ``--config.optim.weight_decay=5e-4``. Values derived from others (steps per epoch,
schedule boundaries) are computed when the run starts, so overrides carry through.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config():
    c = ml_collections.ConfigDict()

    # The network: a zoo name (python -m dnjax.models lists them) and the fields to override.
    # Fields left at None keep the zoo entry's value.
    c.model = ml_collections.ConfigDict()
    c.model.name = "densenet_bc100_k12"
    c.model.depth = placeholder(int)
    c.model.growth_rate = placeholder(int)
    c.model.bottleneck = placeholder(bool)
    c.model.bn_size = placeholder(int)
    c.model.compression = placeholder(float)
    c.model.num_init_features = placeholder(int)
    c.model.dropout_rate = placeholder(float)
    c.model.dropout_placement = placeholder(str)  # 'torch' (paper's code) or 'torchvision'
    c.model.activation = placeholder(str)  # 'pre' (paper) or 'post' (the ablation)
    c.model.memory_efficient = placeholder(bool)

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "cifar10"  # digits | npz | cifar10 | cifar100 | svhn_cropped | imagenet2012
    c.data.data_dir = placeholder(str)  # tfds data dir; default: $TFDS_DATA_DIR or ~/tensorflow_datasets
    # npz data: a file, several separated by commas, or a glob (parts concatenated in that order),
    # each with arrays 'image' (uint8 NHWC) and the label array named by npz_label.
    c.data.npz_train = placeholder(str)
    c.data.npz_test = placeholder(str)
    c.data.npz_label = "label"  # e.g. 'coarse_label' for CIFAR-100's 20 superclasses
    c.data.num_classes = placeholder(int)  # None: from the data set
    c.data.normalization = "mean_std"  # mean_std (CIFAR) | scale (pixels / 255, the SVHN recipe)
    # | imagenet (ImageNet's mean and std, for ImageNet weights)
    c.data.resize = placeholder(int)  # in-memory data: enlarge to resize x resize on the device
    c.data.augment = True  # the "+" of C10+: zero-pad random crop and horizontal flip
    c.data.pad = 4
    c.data.flip = True
    c.data.image_size = 224  # ImageNet crop size
    c.data.workers = 0  # grain decoding processes per host for streamed (ImageNet) data
    c.data.train_limit = placeholder(int)  # use only the first N training images (smoke runs)
    c.data.test_limit = placeholder(int)

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
    return c
