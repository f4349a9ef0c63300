"""A word-level LSTM language model whose regularisation is a set of hyperparameters.

The model follows AWD-LSTM (Merity, Keskar & Socher, 2018), written here from its description:
tied input and output embeddings, and seven regularisers, all tuned by hypergradients as in
Self-Tuning Networks and the paper's Table 4:

==========  ==================================================  ============  ================
name        what it does                                         "7"           "many"
==========  ==================================================  ============  ================
embedding   drops whole words (rows of the embedding matrix)    one rate      one per word
input       variational dropout on the embedded input           one rate      one per unit
hidden      variational dropout between LSTM layers              one rate      one per unit and
                                                                                layer boundary
output      variational dropout on the last layer's output      one rate      one per unit
weight      DropConnect on the hidden-to-hidden weights          one rate      one per weight
ar          activation regularisation (AR) coefficient          one           one
tar         temporal activation regularisation (TAR)            one           one
==========  ==================================================  ============  ================

Rates are :class:`~optuna_ift.hyperparams.ConcreteDropout` logits (the concrete relaxation
makes the training loss differentiable in them); AR and TAR coefficients are stored as
logarithms. "Variational" dropout draws one mask per sequence and shares it over time steps;
DropConnect draws one mask of the hidden-to-hidden matrix per forward pass, shared over the
batch and time. In evaluation mode every dropout is the identity.

The LSTM is unrolled in Python (one matrix product per time step for the recurrence, the input
projection of all steps in one product), so its double backward works on every device; cuDNN's
fused LSTM has no second derivative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from optuna_ift._validation import check_int as _check_int
from optuna_ift._validation import check_positive as _check_positive
from optuna_ift.hyperparams import ConcreteDropout, HyperParameter

__all__ = ["DEFAULT_INIT", "DROPOUTS", "REGULARIZERS", "LSTMLanguageModel", "lm_train_loss",
           "lm_val_loss"]

#: The five dropout rates, in the order of the table above.
DROPOUTS = ("embedding", "input", "hidden", "output", "weight")
#: All seven regularisation hyperparameters.
REGULARIZERS = (*DROPOUTS, "ar", "tar")
_VARIANTS = ("7", "many", "none")
#: Initial value of each regulariser unless ``init`` says otherwise.
DEFAULT_INIT = {"embedding": 0.1, "input": 0.1, "hidden": 0.1, "output": 0.1, "weight": 0.1,
                 "ar": 0.5, "tar": 0.5}


class _LSTMLayer(nn.Module):
    """One LSTM layer, unrolled over time, that accepts its hidden-to-hidden matrix."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        bound = 1.0 / math.sqrt(hidden_size)

        def uniform(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))

        self.weight_ih = uniform(4 * hidden_size, input_size)
        self.weight_hh = uniform(4 * hidden_size, hidden_size)
        self.bias = uniform(4 * hidden_size)

    def forward(self, x: Tensor, weight_hh: Tensor) -> Tensor:
        """``x`` shaped ``(time, batch, input)`` to outputs ``(time, batch, hidden)``, from a
        zero state."""
        steps, batch, _ = x.shape
        projected = F.linear(x, self.weight_ih, self.bias)  # all time steps at once
        h = x.new_zeros(batch, self.hidden_size)
        c = x.new_zeros(batch, self.hidden_size)
        outputs = []
        for t in range(steps):
            gates = torch.addmm(projected[t], h, weight_hh.t())
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs)


class LSTMLanguageModel(nn.Module):
    """AWD-style LSTM language model with tuned dropout rates and AR/TAR coefficients.

    ``model(tokens)`` maps token ids shaped ``(batch, time)`` to next-word logits shaped
    ``(batch, time, vocab_size)``; every sequence starts from a zero state. After a forward
    pass in training mode, :attr:`penalty` holds the AR + TAR term for the training loss.

    Args:
        vocab_size: Number of words.
        hidden_size: Units of every LSTM layer and size of the (tied) embedding.
        num_layers: LSTM layers (>= 1).
        hyperparameters: ``"7"``: one value per regulariser (the setting of the paper's Table
            4 and of Self-Tuning Networks); ``"many"``: a rate per unit, per word and per
            hidden-to-hidden weight (see the module's table); ``"none"``: no dropout and no
            AR/TAR at all (a plain LSTM, e.g. to tune a weight decay per weight instead).
        init: Initial value of each regulariser by name (rates in (0, 1), coefficients > 0);
            missing names keep :data:`DEFAULT_INIT` (every rate 0.1, AR and TAR 0.5).
        temperature: Temperature of the concrete relaxation of every dropout.
        generator: Random generator of the dropout masks (``None``: the global one).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        hidden_size: int = 200,
        num_layers: int = 2,
        hyperparameters: str = "7",
        init: Mapping[str, float] | None = None,
        temperature: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_int("vocab_size", vocab_size, 2)
        _check_int("hidden_size", hidden_size, 1)
        _check_int("num_layers", num_layers, 1)
        if hyperparameters not in _VARIANTS:
            raise ValueError(f"hyperparameters must be one of {_VARIANTS}, got {hyperparameters!r}")
        init = dict(init or {})
        unknown = set(init) - set(REGULARIZERS)
        if unknown:
            raise ValueError(f"init has unknown names {sorted(unknown)}; allowed: {REGULARIZERS}")
        values = DEFAULT_INIT | init
        for name in ("ar", "tar"):
            _check_positive(f"init[{name!r}]", values[name])
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.variant = hyperparameters
        self.embedding = nn.Parameter(torch.empty(vocab_size, hidden_size).uniform_(-0.1, 0.1))
        self.layers = nn.ModuleList(_LSTMLayer(hidden_size, hidden_size) for _ in range(num_layers))
        self.decoder_bias = nn.Parameter(torch.zeros(vocab_size))

        many = hyperparameters == "many"

        def dropout(name: str, shape: tuple[int, ...], count: int = 1) -> nn.ModuleList:
            count = 0 if hyperparameters == "none" else count
            return nn.ModuleList(
                ConcreteDropout(shape if many else (), init=values[name],
                                temperature=temperature, generator=generator)
                for _ in range(count))

        self.embedding_dropout = dropout("embedding", (vocab_size,))
        self.input_dropout = dropout("input", (hidden_size,))
        boundaries = num_layers - 1
        self.hidden_dropout = dropout("hidden", (hidden_size,),
                                      boundaries if many else min(boundaries, 1))
        self.output_dropout = dropout("output", (hidden_size,))
        self.weight_dropout = dropout("weight", (4 * hidden_size, hidden_size),
                                      num_layers if many else 1)
        self.log_ar = self.log_tar = None
        if hyperparameters != "none":
            self.log_ar = HyperParameter(torch.tensor(math.log(values["ar"])))
            self.log_tar = HyperParameter(torch.tensor(math.log(values["tar"])))
        self.penalty: Tensor | None = None

    # -- the regularisers -------------------------------------------------------------------

    def dropout_modules(self) -> dict[str, list[ConcreteDropout]]:
        """The :class:`ConcreteDropout` modules of each rate name: one in "7", one per layer
        (boundary) in "many", none in "none" (and no ``"hidden"`` for one layer)."""
        return {"embedding": list(self.embedding_dropout), "input": list(self.input_dropout),
                "hidden": list(self.hidden_dropout), "output": list(self.output_dropout),
                "weight": list(self.weight_dropout)}

    def regularizers(self) -> dict[str, Tensor]:
        """Current value of each regulariser, detached: every rate of that name, flattened,
        and the AR / TAR coefficients (empty for the "none" variant)."""
        out = {name: torch.cat([m.rate.detach().reshape(-1) for m in modules])
               for name, modules in self.dropout_modules().items() if modules}
        if self.log_ar is not None:
            out["ar"] = self.log_ar.detach().exp()
            out["tar"] = self.log_tar.detach().exp()
        return out

    @staticmethod
    def _pick(modules: nn.ModuleList, index: int) -> ConcreteDropout | None:
        """The dropout of layer ``index``: its own in "many", the shared one in "7", ``None``
        when there is none."""
        return modules[min(index, len(modules) - 1)] if len(modules) else None

    def _drop(self, modules: nn.ModuleList, index: int, x: Tensor) -> Tensor:
        """Variational dropout of ``x`` shaped ``(time, ...)``: one mask for all time steps."""
        drop = self._pick(modules, index)
        return x if drop is None else drop(x, shared_dims=(0,))

    # -- forward ----------------------------------------------------------------------------

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.ndim != 2 or tokens.dtype != torch.int64:
            raise ValueError(f"tokens must be int64 of shape (batch, time), got "
                             f"{tuple(tokens.shape)} {tokens.dtype}")
        # Whole words: the embedding seen as (hidden, words), one mask entry per word.
        embedding = self._drop(self.embedding_dropout, 0, self.embedding.t()).t()
        x = F.embedding(tokens.t(), embedding)  # (time, batch, hidden)
        x = self._drop(self.input_dropout, 0, x)
        for index, layer in enumerate(self.layers):
            connect = self._pick(self.weight_dropout, index)
            weight_hh = layer.weight_hh if connect is None else connect.drop_connect(
                layer.weight_hh)
            raw = layer(x, weight_hh)
            last = index == self.num_layers - 1
            x = self._drop(self.output_dropout if last else self.hidden_dropout,
                           0 if last else index, raw)
        self.penalty = None
        if self.training and self.log_ar is not None:
            self.penalty = self.log_ar.exp() * x.pow(2).mean()
            if raw.shape[0] > 1:
                temporal = (raw[1:] - raw[:-1]).pow(2).mean()
                self.penalty = self.penalty + self.log_tar.exp() * temporal
        logits = F.linear(x, self.embedding, self.decoder_bias)  # tied weights
        return logits.transpose(0, 1)


def lm_val_loss(model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
    """Mean next-word cross-entropy (nats per token) on ``batch = (inputs, targets)``."""
    logits = model(batch[0])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[1].reshape(-1))


def lm_train_loss(model: LSTMLanguageModel, batch: tuple[Tensor, ...]) -> Tensor:
    """:func:`lm_val_loss` plus the AR and TAR penalty of the same forward pass."""
    loss = lm_val_loss(model, batch)
    return loss + model.penalty if model.penalty is not None else loss
