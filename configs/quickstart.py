"""Offline quickstart: a small DenseNet-BC on scikit-learn's bundled 8x8 handwritten digits.

Real data that ships with scikit-learn, so it runs anywhere without a download; about a minute on
two CPU cores, and the test error falls from 90% (chance) to a few percent.

    python -m dnjax.main --config=configs/quickstart.py --workdir=/tmp/dnjax-quickstart
"""

from configs import default


def get_config():
    c = default.get_config()
    # DenseNet-BC with 2 bottleneck layers per block (depth 16), growth rate 12.
    c.model = dict(name="densenet_cifar", depth=16, growth_rate=12, bottleneck=True, compression=0.5)
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
