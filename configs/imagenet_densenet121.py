"""DenseNet-121 on ImageNet: ``configs/imagenet.py:densenet121`` under its own name (paper: 25.02%
top-1 error, single crop). ``configs/imagenet.py`` documents the recipe and the other depths.

    python -m dnjax.main --config=configs/imagenet_densenet121.py --workdir=gs://BUCKET/dn121 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets
"""

from configs import imagenet


def get_config():
    return imagenet.get_config("densenet121")
