"""Pre-activation ResNet-164 on CIFAR, the baseline of the DenseNet comparison.

He et al.'s recipe: batch 128, learning rate 0.1 divided by 10 at 50% and 75% of training
(32k and 48k of 64k iterations, about 164 epochs), Nesterov-free momentum 0.9, weight decay 1e-4.

    python -m dnjax.main --config=configs/cifar_resnet.py:c10+ --workdir=runs/preact164_c10+
    python -m dnjax.main --config=configs/cifar_resnet.py:c10+ --workdir=runs/resnet110 \
        --config.model.name=resnet110 --config.optim.warmup_epochs=1

Published (test error %): pre-activation ResNet-164 C10+ 5.46, C100+ 24.33; ResNet-110 C10+ 6.43.
"""

from configs import default, recipes


def get_config(arg="c10+"):
    c = default.get_config()
    c.model.name = "preact_resnet164"
    recipes.apply_dataset(c, arg)
    c.model.dropout_rate = None  # ResNets have no dropout
    c.batch_size = 128
    c.num_epochs = 164.0  # 64k iterations at batch 128 on 50k images
    c.optim.nesterov = False
    return c
