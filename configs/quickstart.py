"""Offline quickstart: a small DenseNet-BC on scikit-learn's bundled 8x8 handwritten digits.

Real data that ships with scikit-learn, so it runs anywhere without a download; about a minute on
two CPU cores, and the test error falls from 90% (chance) to a few percent.

    python -m dnjax.main --config=configs/quickstart.py --workdir=/tmp/dnjax-quickstart
"""

from dnjax import defaults


def get_config():
    c = defaults.get_config("densenet_cifar")
    c.model.depth = 16  # DenseNet-BC, 2 bottleneck layers per block
    c.model.growth_rate = 12
    c.model.bottleneck = True
    c.model.compression = 0.5
    c.data.dataset = "digits"
    c.data.pad = 1  # 8x8 images: a one-pixel shift
    c.data.flip = False  # digits are not mirror-symmetric
    c.batch_size = 64
    c.eval_batch_size = 128
    c.num_epochs = 15.0
    c.optim.learning_rate = 0.1
    c.eval_every_epochs = 5.0
    c.checkpoint_every_epochs = 5.0
    c.log_every_steps = 10
    return c
