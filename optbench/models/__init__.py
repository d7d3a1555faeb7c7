"""Models selectable with `model=NAME`; each takes what it needs about the data (`input_shape`,
`num_classes`, `vocab_size`, `per_token`) by name and declares the `inputs` it reads."""

from optbench.models.bert import Bert
from optbench.models.gan import DCGAN, GAN, RingGAN
from optbench.models.mlp import MLP
from optbench.models.resnet import ResNet
from optbench.models.rnn import RNN
from optbench.models.tv import TorchvisionResNet, TorchvisionViT
from optbench.models.vit import ViT

__all__ = ["MLP", "ResNet", "ViT", "TorchvisionResNet", "TorchvisionViT", "RNN", "Bert", "GAN", "RingGAN", "DCGAN"]
