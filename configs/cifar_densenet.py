"""DenseNet-BC (L=100, k=12) on CIFAR or SVHN with the paper's recipe.

The argument picks the data set column (c10, c10+, c100, c100+, svhn; cifar10/cifar100 mean the
augmented c10+/c100+). Any other Table 2 network through --config.model.name:

    python -m dnjax.main --config=configs/cifar_densenet.py:c100+ --workdir=runs/bc100_c100+
    python -m dnjax.main --config=configs/cifar_densenet.py:c10 --workdir=runs/d40_c10 \
        --config.model.name=densenet40_k12

Paper (test error %, end of training): DenseNet-BC-100 k=12 C10 5.92, C10+ 4.51, C100 24.15,
C100+ 22.27, SVHN 1.76.
"""

from configs import default, recipes


def get_config(arg="c10+"):
    c = default.get_config()
    c.model.name = "densenet_bc100_k12"
    c.batch_size = 64
    c.num_epochs = 300.0
    recipes.apply_dataset(c, arg)
    return c
