"""DenseNet-121 on ImageNet (ILSVRC 2012), the paper's recipe; streamed through grain.

90 epochs, batch 256, learning rate 0.1 divided by 10 at epochs 30 and 60, Nesterov momentum 0.9,
weight decay 1e-4. Prepare the data once (see the README), then on every host of the pod:

    python -m dnjax.main --config=configs/imagenet_densenet121.py --workdir=gs://BUCKET/dn121 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Paper: 25.02% top-1 error (single crop). Other depths: --config.model.name=densenet169 (23.80),
densenet201 (22.58), densenet264 (22.15), densenet161 (22.2).
"""

from configs import default


def get_config():
    c = default.get_config()
    c.model.name = "densenet121"
    c.data.dataset = "imagenet2012"
    c.data.image_size = 224
    c.batch_size = 256
    c.eval_batch_size = 256
    c.num_epochs = 90.0
    c.optim.decay_at = (1 / 3, 2 / 3)
    c.dtype = "bfloat16"
    c.log_every_steps = 100
    return c
