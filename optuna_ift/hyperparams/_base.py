"""How a module declares that a tensor is a hyperparameter."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from optuna_ift._validation import ArgumentKindError

__all__ = ["HyperParameter", "split_parameters"]


class HyperParameter(nn.Parameter):
    """An ``nn.Parameter`` that is tuned on the validation loss instead of the training loss.

    Declare it in any module as you would a parameter; :func:`split_parameters` and the trainer
    tell the two kinds apart. It survives ``module.to(...)``, ``state_dict`` round trips and
    ``copy.deepcopy``, and remains an ``nn.Parameter`` for everything else.

    Example:
        >>> class Scaled(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.linear = nn.Linear(3, 1)
        ...         self.log_decay = HyperParameter(torch.zeros(()))
    """

    def __new__(cls, data: Tensor | None = None, requires_grad: bool = True):
        if data is None:
            data = torch.empty(0)
        elif not isinstance(data, Tensor):
            raise ArgumentKindError(
                f"data must be a torch.Tensor or None, got {type(data).__name__}"
            )
        if requires_grad is True and not (data.is_floating_point() or data.is_complex()):
            raise ArgumentKindError(
                f"data must be a floating point (or complex) tensor to require grad, got "
                f"dtype {data.dtype}"
            )
        # _make_subclass keeps the subclass through Module._apply (to, cuda, double, ...).
        instance = torch.Tensor._make_subclass(cls, data, requires_grad)
        return instance

    def __repr__(self) -> str:
        return "HyperParameter containing:\n" + repr(self.data)

    def __reduce_ex__(self, proto):
        # Pickle (and deepcopy) as a HyperParameter, not as a plain Parameter.
        return (_rebuild_hyperparameter, (self.data, self.requires_grad))


def _rebuild_hyperparameter(data: Tensor, requires_grad: bool) -> HyperParameter:
    return HyperParameter(data, requires_grad)


def split_parameters(module: nn.Module) -> tuple[list[nn.Parameter], list[HyperParameter]]:
    """``(weights, hyperparameters)`` of ``module`` and all its submodules.

    Each tensor appears once even when shared between submodules; tensors with
    ``requires_grad=False`` are frozen and belong to neither list.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    weights: list[nn.Parameter] = []
    hyperparameters: list[HyperParameter] = []
    for parameter in module.parameters():
        if not parameter.requires_grad:
            continue
        (hyperparameters if isinstance(parameter, HyperParameter) else weights).append(parameter)
    return weights, hyperparameters
