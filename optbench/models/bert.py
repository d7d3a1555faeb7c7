"""A BERT-style transformer encoder (Devlin et al. 2019, arXiv:1810.04805), small by default.

Token and learned position embeddings, pre-norm encoder blocks (the ViT's), a final LayerNorm and
`head`: per token for masked-language-model pre-training, on the mean of the tokens for sequence
classification. `pretrained` loads every weight but the head from a run's checkpoint, which is
how fine-tuning starts from pre-training (`model.pretrained=outputs/<pre-training run>`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from optbench import checkpoint
from optbench.errors import ConfigError
from optbench.models.vit import Block
from optbench.run_folder import RunFolder
from optbench.schema import Fraction, PositiveInt

log = logging.getLogger("optbench")


class Embeddings(nn.Module):
    def __init__(self, vocab_size: int, length: int, dim: int, dropout: float):
        super().__init__()
        # BERT's N(0, 0.02) for both: with torch's N(0, 1) token embeddings the positions would be
        # drowned out after the LayerNorm, and attention could not find a token's neighbours.
        self.tokens = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.tokens.weight, std=0.02)
        self.positions = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.tokens(x) + self.positions[:, : x.shape[1]]))


class Bert(nn.Module):
    inputs = ("tokens",)

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: PositiveInt,
        vocab_size: int | None = None,
        per_token: bool = False,
        dim: PositiveInt = 256,
        depth: PositiveInt = 4,
        heads: PositiveInt = 4,
        mlp_ratio: float = 4.0,
        dropout: Fraction = 0.1,
        pretrained: Optional[str] = None,
    ):
        super().__init__()
        if vocab_size is None:
            raise ConfigError("model=bert reads token ids and needs data that say their vocabulary size.")
        if dim % heads:
            raise ConfigError(f"model.heads={heads}: must divide model.dim={dim}.")
        self.per_token = per_token
        self.embed = Embeddings(vocab_size, input_shape[0], dim, dropout)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        if pretrained is not None:
            self.load_body(Path(pretrained).expanduser())

    def layers(self) -> list[list[str]]:
        """Embeddings, each block, then the final norm with the head (the BEiT/timm order)."""
        return [["embed"], *[[f"blocks.{i}"] for i in range(len(self.blocks))], ["norm", "head"]]

    def no_weight_decay(self) -> set[str]:
        """The learned position embedding: no weight decay, as timm's ViT has for its `pos_embed`."""
        return {"embed.positions"}

    def load_body(self, path: Path) -> None:
        """Every weight but `head.*` from a checkpoint file, or a run folder's checkpoints/last.pt."""
        if path.is_dir():
            path = RunFolder(path).last_checkpoint
        state = checkpoint.load(path, key="model.pretrained")["model"]
        body = {k: v for k, v in state.items() if not k.startswith("head.")}
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("head.")}
        wrong = sorted(set(own) ^ set(body)) + [k for k in own.keys() & body.keys() if own[k].shape != body[k].shape]
        if wrong:
            raise ConfigError(
                f"model.pretrained={path}: its body does not fit this model ({', '.join(wrong[:4])}"
                f"{' ...' if len(wrong) > 4 else ''}); use the same dim, depth, heads and seq_len as the pre-training."
            )
        if any(v.is_meta for v in own.values()):
            return  # the pre-flight's shape-only build (validate.dry_build): the fit is all it checks
        self.load_state_dict(body, strict=False)
        log.info("loaded the pre-trained body (%d tensors) from %s", len(body), path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.blocks(self.embed(x)))
        return self.head(h if self.per_token else h.mean(dim=1))
