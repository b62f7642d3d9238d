"""Every knob of a run at its default: the DenseNet paper's CIFAR recipe (``dnjax/knobs.py`` declares
each knob, its default, its valid values and whether a resumed run may change it).

The other config files start from this one and set what their recipe changes. Any field can be
overridden on the command line, and values derived from others (steps per epoch, the
learning-rate drops) are computed when the run starts, so overrides carry through:

    python -m dnjax.main --config=configs/default.py --workdir=runs/x --config.optim.weight_decay=5e-4

The argument names the network (default densenet_bc100_k12): ``configs/default.py:resnet110``.
``config.model`` holds the network's name and the fields of its module that a config sets; every
other field keeps the zoo entry's value. Any field of the chosen network can be set on the command
line, e.g. --config.model.growth_rate=24 (``python -m dnjax.models --fields --only NAME`` lists
them); one it does not take is refused, naming it. A run's ``config.json`` records every field.
"""

from dnjax import knobs


def get_config(arg="densenet_bc100_k12"):
    return knobs.defaults(arg or "densenet_bc100_k12")
