"""Models selectable with `model=NAME`; each takes `input_shape` and `num_classes` from the data."""

from optbench.models.mlp import MLP
from optbench.models.resnet import ResNet
from optbench.models.vit import ViT

__all__ = ["MLP", "ResNet", "ViT"]
