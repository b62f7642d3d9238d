"""DenseNet-121 fine-tuned from ImageNet weights to CIFAR-100, at the network's 224 x 224 input.

Convert torchvision's weights once, then start from them; the argument (or
``--config.init_from``) names the converted workdir. The 1000-class classifier is replaced by a
freshly initialised 100-class one (the log names it); every other weight and BatchNorm statistic
is loaded as it is.

    python -m dnjax.convert torchvision --model=densenet121 --weights=densenet121-a639ec97.pth \
        --out=runs/tv_densenet121
    python -m dnjax.main --config=configs/finetune_densenet121.py:runs/tv_densenet121 \
        --workdir=runs/ft_densenet121_c100

Recipe: CIFAR-100's 50,000 training images, zero-padded by 4, randomly cropped back to 32 x 32 and
flipped (the C100+ augmentation), then enlarged bilinearly to 224 x 224 on the device and
normalised with ImageNet's mean and std, as the weights were trained; test images enlarged the
same way. 15 epochs at batch 128 with SGD, Nesterov momentum 0.9, learning rate 0.01 (a tenth of
training from scratch: the features are adapted, not relearnt) after one epoch of linear warm-up
from 0.001, cosine decay to 0, weight decay 1e-4 on all parameters; BatchNorm keeps training
(batch statistics, running averages with momentum 0.9). float32; ``--config.dtype=bfloat16`` on
accelerators. No result of this recipe has been measured here.
"""

from configs import default


def get_config(arg=None):
    c = default.get_config()
    c.model = dict(name="densenet121")
    c.init_from = arg or None  # the converted workdir
    c.data.dataset = "cifar100"
    c.data.normalization = "imagenet"
    c.data.augment = True
    c.data.pad = 4
    c.data.flip = True
    c.data.resize = 224

    c.batch_size = 128
    c.eval_batch_size = 200
    c.num_epochs = 15.0
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.01
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 1.0
    c.optim.warmup_factor = 0.1
    c.eval_every_epochs = 1.0
    c.log_every_steps = 50
    return c
