"""Every knob of a run, with the paper's CIFAR recipe as the defaults: ``dnjax/defaults.py``.

``config.model`` holds the fields of the chosen zoo network (``get_config(model=NAME)``); the other
config files start from the same defaults. Any field can be overridden on the command line:

    python -m dnjax.main --config=configs/default.py --workdir=runs/x --config.optim.weight_decay=5e-4
"""

from dnjax.defaults import get_config

__all__ = ["get_config"]
