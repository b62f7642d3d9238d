"""The DenseNets of the paper's Table 2 on CIFAR and SVHN, with the paper's recipe.

The argument is ``MODEL,DATASET``; either half may be left out (default: densenet_bc100_k12, c10+).
DATASET is a column of Table 2: c10, c100 (no augmentation, dropout 0.2 after each conv), c10+,
c100+ (crop + flip, no dropout), svhn (train split, pixels / 255, 40 epochs, dropout 0.2). CIFAR:
batch 64, 300 epochs, SGD with Nesterov momentum 0.9, learning rate 0.1 divided by 10 at epochs
150 and 225, weight decay 1e-4.

    python -m dnjax.main --config=configs/cifar_densenet.py:densenet_bc100_k12,c100+ \
        --workdir=runs/densenet_bc100_k12_c100+

Published test error (%) at the end of training; every cell is one command, the pattern above:

| MODEL              | c10  | c10+ | c100  | c100+ | svhn |
|--------------------|------|------|-------|-------|------|
| densenet40_k12     | 7.00 | 5.24 | 27.55 | 24.42 | 1.79 |
| densenet100_k12    | 5.77 | 4.10 | 23.79 | 20.20 | 1.67 |
| densenet100_k24    | 5.83 | 3.74 | 23.42 | 19.25 | 1.59 |
| densenet_bc100_k12 | 5.92 | 4.51 | 24.15 | 22.27 | 1.76 |
| densenet_bc250_k24 | 5.19 | 3.62 | 19.64 | 17.60 | 1.74 |
| densenet_bc190_k40 |  -   | 3.46 |   -   | 17.18 |  -   |

The post-activation ablation (Conv-BN-ReLU layers; DenseNet-BC-100: C10+ 5.18, C100+ 24.30):

    python -m dnjax.main --config=configs/cifar_densenet.py:densenet_bc100_k12,c10+ \
        --workdir=runs/bc100_post_c10+ --config.model.activation=post

Any other size through the generic builder, e.g. DenseNet-BC L=52, k=12:

    python -m dnjax.main --config=configs/cifar_densenet.py:densenet_cifar,c10+ --workdir=runs/bc52 \
        --config.model.depth=52 --config.model.growth_rate=12 --config.model.bottleneck=True \
        --config.model.compression=0.5

``python -m experiments.run table2 --print`` lists every row's command.
"""

from configs import common, default

MODELS = common.cifar_models("densenet")


def get_config(arg="densenet_bc100_k12,c10+"):
    model, column = common.parse_arg(arg, MODELS, default_model="densenet_bc100_k12")
    c = default.get_config()
    c.model = dict(name=model, dropout_rate=common.dropout(column))
    common.set_data(c, column)
    c.data.pad = 4
    c.data.flip = True

    c.batch_size = 64
    c.num_epochs = 40.0 if column == "svhn" else 300.0
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.1
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "piecewise"
    c.optim.decay_at = (0.5, 0.75)
    c.optim.decay_factor = 0.1
    return c
