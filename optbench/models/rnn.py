"""Recurrent networks on token sequences: a language model (a class per position) or a sequence
classifier (a class per sequence, from the last hidden state), with a vanilla RNN, LSTM or GRU."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from optbench.errors import ConfigError
from optbench.schema import Fraction, PositiveInt

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RNN(nn.Module):
    """Embedding `embed`, the recurrent stack `rnn`, and the classifier `head`."""

    inputs = ("tokens",)

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: PositiveInt,
        vocab_size: int | None = None,
        per_token: bool = False,
        cell: Literal["rnn", "lstm", "gru"] = "lstm",
        embed_dim: PositiveInt = 64,
        hidden: PositiveInt = 256,
        num_layers: PositiveInt = 1,
        dropout: Fraction = 0.0,
    ):
        super().__init__()
        if vocab_size is None:
            raise ConfigError("model=rnn reads token ids and needs data that say their vocabulary size.")
        self.per_token = per_token
        self.num_layers = num_layers
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.rnn = CELLS[cell](embed_dim, hidden, num_layers, batch_first=True,
                               dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(hidden, num_classes)

    def layers(self) -> list[list[str]]:
        """Embedding, each recurrent layer, head: the depth order of layer-wise LR decay."""
        per_layer = [[f"rnn.{kind}_l{k}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                     for k in range(self.num_layers)]
        return [["embed"], *per_layer, ["head"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedded = self.embed(x)
        if embedded.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not bf16_rnn_on_this_cpu():
            # CPU autocast sends the LSTM to oneDNN in bfloat16, which needs AVX-512 and fails
            # without it ("could not create a primitive descriptor"): the recurrent stack runs in
            # float32 then, as autocast runs GRU and RNN cells anyway.
            with torch.autocast("cpu", enabled=False):
                out, _ = self.rnn(embedded.float())
        else:
            out, _ = self.rnn(embedded)
        return self.head(out if self.per_token else out[:, -1])


@functools.cache
def bf16_rnn_on_this_cpu() -> bool:
    """Whether oneDNN can run an LSTM in bfloat16 here (AVX-512); said once in the run's log when not."""
    able = torch.backends.cpu.get_cpu_capability() == "AVX512"
    if not able:
        logging.getLogger(__name__).warning(
            "trainer.precision=bf16: this CPU (%s) has no bfloat16 LSTM in oneDNN (it needs AVX-512); the "
            "recurrent layers run in float32, the embedding and the head in bfloat16.",
            torch.backends.cpu.get_cpu_capability())
    return able
