"""The ResNet baselines of the DenseNet comparison on CIFAR, with He et al.'s recipe.

The argument is ``MODEL,DATASET``; either half may be left out (default: preact_resnet164, c10+).
Recipe (He et al. 2015/2016): batch 128, learning rate 0.1 divided by 10 at 50% and 75% of
training (32k and 48k of 64k iterations: 164 epochs of 50k images), momentum 0.9 without
Nesterov, weight decay 1e-4, no dropout. ResNet-110 (both forms) warms up at 0.01 for one epoch
(391 iterations; the paper's "about 400") before going to 0.1.

    python -m dnjax.main --config=configs/cifar_resnet.py:preact_resnet164,c100+ \
        --workdir=runs/preact_resnet164_c100+

Published test error (%), each one command of the pattern above:

| MODEL             | units                     | params | c10+ | c100+ |
|-------------------|---------------------------|--------|------|-------|
| resnet110         | original (post-act.)      | 1.7M   | 6.43 |  -    |
| preact_resnet110  | pre-activation            | 1.7M   | 6.37 |  -    |
| resnet164         | original bottleneck       | 1.7M   | 5.93 | 25.16 |
| preact_resnet164  | pre-activation bottleneck | 1.7M   | 5.46 | 24.33 |
| resnet1001        | original bottleneck       | 10.2M  | 7.61 | 27.82 |
| preact_resnet1001 | pre-activation bottleneck | 10.2M  | 4.92 | 22.71 |

(ResNet-1001 pre-activation reaches 4.62 at batch 64: add --config.batch_size=64.) Other depths
through resnet_cifar (6n+2, basic units) or resnet_cifar_bottleneck (9n+2), e.g.
``--config=configs/cifar_resnet.py:resnet_cifar,c10+ --config.model.depth=56`` (6.97).
"""

from configs import common, default

MODELS = common.cifar_models("resnet")
WARMUP_MODELS = ("resnet110", "preact_resnet110")


def get_config(arg="preact_resnet164,c10+"):
    model, column = common.parse_arg(arg, MODELS, default_model="preact_resnet164")
    c = default.get_config()
    c.model = dict(name=model)  # no dropout in He et al.'s networks
    common.set_data(c, column)
    c.data.pad = 4
    c.data.flip = True

    c.batch_size = 128
    c.num_epochs = 164.0  # 64k iterations at batch 128 on 50k images (SVHN included)
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.1
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "piecewise"
    c.optim.decay_at = (0.5, 0.75)
    c.optim.decay_factor = 0.1
    if model in WARMUP_MODELS:  # 0.01 for the first epoch, then 0.1
        c.optim.warmup_epochs = 1.0
        c.optim.warmup_factor = 0.1
    return c
