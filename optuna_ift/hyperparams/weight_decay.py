"""Weight decay as a hyperparameter: one global rate, one per layer, or one per weight.

The decay is stored as its logarithm, so it stays positive under any gradient step and a step
changes it by a factor rather than an amount (decays worth trying span orders of magnitude).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from optuna_ift._validation import check_choice, check_positive
from optuna_ift.hyperparams._base import HyperParameter

__all__ = ["WeightDecay"]

_MODES = ("global", "per_layer", "per_weight")


class WeightDecay(nn.Module):
    """An L2 penalty ``sum_k sum(decay_k * w_k**2) / 2`` with learned, log-parameterised decays.

    At construction the module records which of ``module``'s weights it decays (by name and
    shape) but does not keep ``module`` itself, so its weights are not registered twice when
    both sit in one model. Call it on the module (or a ``{name: tensor}`` mapping, such as the
    one given to ``torch.func.functional_call``) to get the penalty for the training loss.

    Args:
        module: The module whose weights are decayed. Its ``HyperParameter``s and frozen
            tensors (``requires_grad=False``) are never decayed.
        mode: ``"global"`` (one scalar for all weights), ``"per_layer"`` (one scalar per weight
            tensor) or ``"per_weight"`` (a tensor shaped like each weight).
        init: The initial decay (not its logarithm); a finite number > 0.
        include_biases: Also decay tensors with fewer than two dimensions (biases and the
            scales of normalisation layers), which are skipped by default.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> decay = WeightDecay(net, mode="per_layer", init=1e-3)
        >>> train_loss = F.cross_entropy(net(x), y) + decay(net)
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        mode: str = "per_weight",
        init: float = 1e-4,
        include_biases: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        check_choice("mode", mode, _MODES)
        init = check_positive("init", init)
        if not isinstance(include_biases, bool):
            raise TypeError(f"include_biases must be a bool, got {type(include_biases).__name__}")

        decayed = [
            (name, p)
            for name, p in module.named_parameters()
            if p.requires_grad
            and not isinstance(p, HyperParameter)
            and (include_biases or p.ndim >= 2)
        ]
        if not decayed:
            raise ValueError(
                "module has no weights to decay (biases and 1-d tensors are skipped unless "
                "include_biases=True)"
            )
        self.mode = mode
        self.include_biases = include_biases
        self._names = tuple(name for name, _ in decayed)
        self._shapes = tuple(tuple(p.shape) for _, p in decayed)

        log_init = math.log(init)
        if mode == "global":
            first = decayed[0][1]
            tensors = [torch.full((), log_init, dtype=first.dtype, device=first.device)]
        elif mode == "per_layer":
            tensors = [torch.full((), log_init, dtype=p.dtype, device=p.device) for _, p in decayed]
        else:
            tensors = [torch.full_like(p.detach(), log_init) for _, p in decayed]
        self.log_decays = nn.ParameterList([HyperParameter(t) for t in tensors])

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the decayed weights (in the order of ``log_decays`` unless global)."""
        return self._names

    @property
    def num_hyperparameters(self) -> int:
        """How many scalar decays there are."""
        return sum(p.numel() for p in self.log_decays)

    def _decay(self, k: int) -> Tensor:
        return self.log_decays[0 if self.mode == "global" else k].exp()

    def forward(self, module: nn.Module | Mapping[str, Tensor]) -> Tensor:
        """The penalty ``sum_k sum(decay_k * w_k**2) / 2`` on the recorded weights.

        Args:
            module: The module given at construction (or one with the same parameter names and
                shapes), or a mapping from those names to tensors.

        Returns:
            A scalar tensor with a graph to both the weights and the log decays.
        """
        if isinstance(module, nn.Module):
            weights = dict(module.named_parameters())
        elif isinstance(module, Mapping):
            weights = module
        else:
            raise TypeError(
                f"module must be a torch.nn.Module or a mapping of names to tensors, "
                f"got {type(module).__name__}"
            )
        total = None
        for k, (name, shape) in enumerate(zip(self._names, self._shapes)):
            if name not in weights:
                raise ValueError(
                    f"module has no parameter {name!r}: pass the module this WeightDecay was "
                    "built for (not a wrapper around it)"
                )
            w = weights[name]
            if tuple(w.shape) != shape:
                raise ValueError(
                    f"parameter {name!r} has shape {tuple(w.shape)}, but this WeightDecay was "
                    f"built for shape {shape}"
                )
            term = (self._decay(k) * w.square()).sum()
            total = term if total is None else total + term
        return total / 2

    @torch.no_grad()
    def decays(self) -> dict[str, Tensor]:
        """The current decays (detached), keyed by weight name, for summaries.

        Each value is a scalar in the ``"global"`` and ``"per_layer"`` modes (the same scalar
        for every name in ``"global"``) and shaped like the weight in ``"per_weight"``.
        """
        return {name: self._decay(k).detach().clone() for k, name in enumerate(self._names)}

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, weights={len(self._names)}, "
            f"num_hyperparameters={self.num_hyperparameters}"
        )
