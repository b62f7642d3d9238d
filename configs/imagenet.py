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

from dnjax import recipes

MODELS = recipes.IMAGENET_MODELS


def get_config(arg="densenet121"):
    return recipes.imagenet(arg)
