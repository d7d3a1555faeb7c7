"""Models selectable with `model=NAME`; each takes what it needs about the data (`input_shape`,
`num_classes`, `vocab_size`, `per_token`) by name and declares the `inputs` it reads."""

from optbench.models.bert import Bert
from optbench.models.gan import DCGAN, GAN, RingGAN
from optbench.models.mlp import MLP
from optbench.models.resnet import ResNet
from optbench.models.rnn import RNN
from optbench.models.vit import ViT

__all__ = ["MLP", "ResNet", "ViT", "TorchvisionResNet", "TorchvisionViT", "RNN", "Bert", "GAN", "RingGAN", "DCGAN"]

_TORCHVISION_MODELS = ("TorchvisionResNet", "TorchvisionViT")


def __getattr__(name: str) -> type:
    """The torchvision-backed models, imported on first use: torchvision costs about a second to
    import, which every run that does not use them (the default one included) would pay."""
    if name in _TORCHVISION_MODELS:
        from optbench.models import tv

        return getattr(tv, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
