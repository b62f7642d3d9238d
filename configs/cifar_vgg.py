"""VGG with BatchNorm on CIFAR: the plain network (no shortcut, x_l = H_l(x_{l-1})) of the comparison.

The argument is ``MODEL,DATASET`` (default vgg16,c10+). Trained with the DenseNets' recipe (batch
64, 300 epochs, Nesterov SGD, learning rate 0.1 /10 at 50% and 75%, weight decay 1e-4), so that a
comparison with a DenseNet row of Table 2 differs in the architecture only. Without augmentation
(c10, c100) no dropout is added: the VGG has none of the dense layers it would go after.

    python -m dnjax.main --config=configs/cifar_vgg.py:vgg16,c10+ --workdir=runs/vgg16_c10+

Published: the DenseNet paper has no VGG row and dnjax.published holds no figure for these
networks, so the reports show none.
"""

from configs import cifar_densenet, common

MODELS = common.cifar_models("vgg")


def get_config(arg="vgg16,c10+"):
    model, column = common.parse_arg(arg, MODELS, default_model="vgg16")
    c = cifar_densenet.get_config(column)  # the DenseNets' recipe for this column
    c.model = dict(name=model)  # no dropout: a VGG has no dense layers to put it after
    return c
