"""Published figures, the one place the code, the configs' docstrings, the reports and the README
tables take them from (tests check the docstrings and the README's zoo table against this module).

Sources: the DenseNet paper (Huang et al., arXiv 1608.06993: Tables 1-3 and Figure 3), its official
code and README (DenseNet-161), He et al. 2015 (arXiv 1512.03385) and 2016 (arXiv 1603.05027) for
the ResNets, torchvision's model documentation and fb.resnet.torch for the ImageNet ResNets.

Parameter counts are the exact figures of the reference implementations where they exist
(DenseNet CIFAR rows, torchvision's DenseNet-121/161/169/201 and ResNets), rounded as the papers
print them otherwise. Errors are % test error of the paper's single runs at the end of training.
"""

# name -> (params for 10 classes, params for 100 classes or None)
CIFAR_PARAMS = {
    "densenet40_k12": (1_019_722, 1_060_132),
    "densenet100_k12": (6_979_642, 7_084_852),
    "densenet100_k24": (27_249_082, 27_457_972),
    "densenet_bc100_k12": (769_162, 800_032),
    "densenet_bc250_k24": (15_324_406, 15_480_556),
    "densenet_bc190_k40": (25_624_430, 25_821_620),
    "resnet20": (270_000, None),
    "resnet32": (460_000, None),
    "resnet44": (660_000, None),
    "resnet56": (850_000, None),
    "resnet110": (1_700_000, None),
    "resnet164": (1_700_000, None),
    "preact_resnet164": (1_700_000, None),
    "resnet1001": (10_200_000, None),
    "preact_resnet1001": (10_200_000, None),
}

IMAGENET_PARAMS = {
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "densenet161": 28_681_000,
    "densenet264": 33_337_704,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}

# Multiply-accumulates per image at the native resolution, counted on the reference models; the
# zoo's own counts (python -m dnjax.models) are checked against them.
MACS = {
    "densenet40_k12": 264.8e6,
    "densenet100_k12": 1.77e9,
    "densenet100_k24": 6.89e9,
    "densenet_bc100_k12": 287.9e6,
    "densenet_bc250_k24": 5.42e9,
    "densenet_bc190_k40": 9.30e9,
    "densenet121": 2.834e9,
    "densenet169": 3.360e9,
    "densenet201": 4.291e9,
    "densenet161": 7.728e9,
    "densenet264": 5.752e9,
}

# Test error (%) by data set: c10, c10+, c100, c100+, svhn.
ERRORS = {
    "densenet40_k12": {"c10": 7.00, "c10+": 5.24, "c100": 27.55, "c100+": 24.42, "svhn": 1.79},
    "densenet100_k12": {"c10": 5.77, "c10+": 4.10, "c100": 23.79, "c100+": 20.20, "svhn": 1.67},
    "densenet100_k24": {"c10": 5.83, "c10+": 3.74, "c100": 23.42, "c100+": 19.25, "svhn": 1.59},
    "densenet_bc100_k12": {"c10": 5.92, "c10+": 4.51, "c100": 24.15, "c100+": 22.27, "svhn": 1.76},
    "densenet_bc250_k24": {"c10": 5.19, "c10+": 3.62, "c100": 19.64, "c100+": 17.60, "svhn": 1.74},
    "densenet_bc190_k40": {"c10+": 3.46, "c100+": 17.18},
    "densenet_bc100_k12_post": {"c10+": 5.18, "c100+": 24.30},
    "resnet20": {"c10+": 8.75},
    "resnet32": {"c10+": 7.51},
    "resnet44": {"c10+": 7.17},
    "resnet56": {"c10+": 6.97},
    "resnet110": {"c10+": 6.43},
    "preact_resnet110": {"c10+": 6.37},
    "resnet164": {"c10+": 5.93, "c100+": 25.16},
    "preact_resnet164": {"c10+": 5.46, "c100+": 24.33},
    "resnet1001": {"c10+": 7.61, "c100+": 27.82},
    "preact_resnet1001": {"c10+": 4.92, "c100+": 22.71},
    # ImageNet top-1 error, single crop
    "densenet121": {"imagenet": 25.02},
    "densenet169": {"imagenet": 23.80},
    "densenet201": {"imagenet": 22.58},
    "densenet161": {"imagenet": 22.2},
    "densenet264": {"imagenet": 22.15},
    # ImageNet ResNets: fb.resnet.torch's single-crop figures, the ResNet points of the paper's
    # Figure 3 (trained with the same recipe as the DenseNets).
    "resnet18": {"imagenet": 30.43},
    "resnet34": {"imagenet": 26.73},
    "resnet50": {"imagenet": 24.01},
    "resnet101": {"imagenet": 22.44},
    "resnet152": {"imagenet": 22.16},
}


def error(model: str, dataset: str, activation: str | None = None) -> float | None:
    """The published test error (%) of zoo network ``model`` on ``dataset`` (c10, c10+, c100, c100+,
    svhn, imagenet), or None when no figure was published. ``activation='post'`` asks for the
    post-activation ablation of a DenseNet (the ResNets name their post-activation form in the
    zoo name instead)."""
    key = f"{model}_post" if activation == "post" and model.startswith("densenet") else model
    return ERRORS.get(key, {}).get(dataset)
