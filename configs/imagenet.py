"""ImageNet (ILSVRC 2012) DenseNets and their ResNet baselines, the paper's recipe; streamed through grain.

The argument names the network (default densenet121). 90 epochs, batch 256, learning rate 0.1
divided by 10 at epochs 30 and 60, Nesterov momentum 0.9, weight decay 1e-4, bfloat16 compute;
random-resized crops with colour jitter and lighting noise, single 224 centre crop for testing.
The ResNets are trained with the same recipe (that of fb.resnet.torch, whose figures the paper's
Figure 3 plots). Prepare the data once (see the README), then on every host of the pod:

    python -m dnjax.main --config=configs/imagenet.py:densenet169 --workdir=gs://BUCKET/densenet169 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Published top-1 error (%, single crop, validation set):

| argument    | params | error | source |
|-------------|--------|-------|--------|
| densenet121 | 8.0M   | 25.02 | DenseNet paper, Table 3 |
| densenet169 | 14.1M  | 23.80 | DenseNet paper, Table 3 |
| densenet201 | 20.0M  | 22.58 | DenseNet paper, Table 3 |
| densenet264 | 33.3M  | 22.15 | DenseNet paper, Table 3 |
| densenet161 | 28.7M  | 22.2  | official DenseNet README |
| resnet50    | 25.6M  | 24.01 | fb.resnet.torch (Figure 3's ResNets) |
| resnet101   | 44.5M  | 22.44 | fb.resnet.torch (Figure 3's ResNets) |

Any other ImageNet network of the zoo works too (resnet18..152, preact_resnet18..152).
"""

from configs import default
from dnjax import models

MODELS = models.names(input_shape=models.IMAGENET_INPUT, roles=("paper",))


def get_config(arg="densenet121"):
    model = (arg or "densenet121").strip()
    if model not in MODELS:
        raise ValueError(f"config argument {arg!r} is not an ImageNet network; use one of {', '.join(MODELS)}")
    c = default.get_config()
    c.model = dict(name=model)
    c.data.dataset = "imagenet2012"  # streamed through grain; augmentation in dnjax.data.imagenet
    c.data.image_size = 224
    c.data.normalization = "mean_std"

    c.batch_size = 256
    c.eval_batch_size = 256
    c.num_epochs = 90.0
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.1
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "piecewise"
    c.optim.decay_at = (1 / 3, 2 / 3)  # epochs 30 and 60
    c.optim.decay_factor = 0.1
    c.dtype = "bfloat16"
    c.log_every_steps = 100
    return c
