"""Models of timm and torchvision chosen by name, built for the data's channels and classes.

`model=timm` builds any of `timm.list_models()` through `timm.create_model`, and `model=torchvision`
any classifier of `torchvision.models.list_models(module=torchvision.models)` through
`torchvision.models.get_model`. Both are untrained and download nothing unless asked
(`model.pretrained=true` fetches timm's weights). The name is checked against the library's list
before the run (`optbench.targets.BY_NAME`). The libraries are imported when a model is built:
they cost a second or more to import, which other runs need not pay.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from optbench.errors import ConfigError
from optbench.schema import PositiveInt


def timm_model(input_shape: Sequence[int], num_classes: PositiveInt, model_name: str = "resnet18",
               pretrained: bool = False) -> nn.Module:
    """`timm.create_model(model_name)` with `in_chans` and `num_classes` from the data.

    `pretrained=true` downloads timm's weights (from the Hugging Face Hub) and replaces the classifier
    for `num_classes`, as timm does for fine-tuning.
    """
    import timm

    return timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, in_chans=input_shape[0])


def torchvision_model(input_shape: Sequence[int], num_classes: PositiveInt, name: str = "resnet18") -> nn.Module:
    """`torchvision.models.get_model(name)`, untrained, with `num_classes` from the data."""
    import torchvision

    if input_shape[0] != 3:
        raise ConfigError(f"model.name={name}: torchvision's classifiers read 3-channel images, the data have "
                          f"{input_shape[0]} (shape {tuple(input_shape)}); model=timm takes any number of channels.")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


# What `build_model` lets them read: both are image classifiers.
timm_model.inputs = ("images",)  # type: ignore[attr-defined]
torchvision_model.inputs = ("images",)  # type: ignore[attr-defined]
