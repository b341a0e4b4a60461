"""Networks as ensembles with batched weights ``[E, in, out]``.

Every network in opt-fast is an :class:`EnsembleMLP`: twin critics are one module with E = 2, and several
ensembles (Q_off and Q_on, or many seeds) run as one batched call through :func:`stack_params` /
:func:`ensemble_forward`, so a fused backend (``kernels/``) sees a single ``[E, B, in]`` problem.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# One layer's parameters: weight [E, in, out], bias [E, 1, out], and the LayerNorm affine pair
# [E, 1, out] (None where the layer has no LayerNorm).
LayerParams = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


class EnsembleMLP(nn.Module):
    """E independent MLPs ``in -> hidden... -> out`` with ReLU, evaluated as batched matmuls.

    Args:
        n_members: ensemble size E.
        in_dim, out_dim: input and output widths.
        hidden: hidden widths (paper: 256-256).
        layer_norm: LayerNorm after every hidden linear layer (SPOT on Adroit).
        last_layer_init: if set, the last layer's weights and biases are drawn from U(-v, v) (SPOT: 1e-3 actor,
            3e-3 critic); otherwise every layer uses PyTorch's ``nn.Linear`` default initialisation.
    """

    def __init__(
        self,
        n_members: int,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        layer_norm: bool = False,
        last_layer_init: float | None = None,
    ):
        super().__init__()
        if n_members < 1 or in_dim < 1 or out_dim < 1:
            raise ValueError(f"EnsembleMLP needs positive sizes, got E={n_members}, in={in_dim}, out={out_dim}")
        self.n_members, self.in_dim, self.out_dim = n_members, in_dim, out_dim
        self.layer_norm = layer_norm
        widths = [in_dim, *hidden, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.norm_weights = nn.ParameterList()
        self.norm_biases = nn.ParameterList()
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(widths) - 2
            # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
            bound = last_layer_init if (last and last_layer_init is not None) else 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(n_members, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n_members, 1, fan_out).uniform_(-bound, bound)))
            if layer_norm and not last:
                self.norm_weights.append(nn.Parameter(torch.ones(n_members, 1, fan_out)))
                self.norm_biases.append(nn.Parameter(torch.zeros(n_members, 1, fan_out)))

    def layer_params(self) -> list[LayerParams]:
        n_hidden = len(self.weights) - 1
        return [
            (
                self.weights[i],
                self.biases[i],
                self.norm_weights[i] if self.layer_norm and i < n_hidden else None,
                self.norm_biases[i] if self.layer_norm and i < n_hidden else None,
            )
            for i in range(len(self.weights))
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, in] (shared by all members) or [E, B, in] -> [E, B, out]."""
        return ensemble_forward(self.layer_params(), x)


def ensemble_forward(params: Sequence[LayerParams], x: torch.Tensor) -> torch.Tensor:
    """The reference (torch) ensemble MLP: batched matmul, bias, optional LayerNorm, ReLU between layers."""
    n_members = params[0][0].shape[0]
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(n_members, *x.shape)
    for i, (weight, bias, norm_weight, norm_bias) in enumerate(params):
        x = torch.baddbmm(bias, x, weight)
        if i < len(params) - 1:
            if norm_weight is not None:
                x = F.layer_norm(x, x.shape[-1:]) * norm_weight + norm_bias
            x = F.relu(x)
    return x


def stack_params(*mlps: EnsembleMLP) -> list[LayerParams]:
    """Concatenate the members of several ensembles of the same shape into one ensemble's parameters.

    Gradients flow back to each module's own parameters, so each keeps its own optimizer.
    """
    per_module = [m.layer_params() for m in mlps]
    stacked: list[LayerParams] = []
    for layers in zip(*per_module):
        stacked.append(
            tuple(None if parts[0] is None else torch.cat(parts, dim=0) for parts in zip(*layers))  # type: ignore[misc]
        )
    return stacked


class Critic(EnsembleMLP):
    """An ensemble of Q-functions Q_j(s, a) (twin critics: E = 2); returns [E, B]."""

    def __init__(self, obs_dim: int, act_dim: int, n_heads: int = 2, **kwargs):
        super().__init__(n_heads, obs_dim + act_dim, 1, **kwargs)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return q_values(self.layer_params(), obs, action)


CRITIC_BACKENDS = ("torch", "triton", "auto")
_critic_backend = "torch"


def use_critic_backend(name: str, device: torch.device | str) -> str:
    """Select how critics are evaluated: ``torch`` (batched matmuls), ``triton`` (the fused kernels of ``kernels/``)
    or ``auto`` (triton on CUDA, torch elsewhere). Returns the backend in use."""
    global _critic_backend
    if name not in CRITIC_BACKENDS:
        raise ValueError(f"--critic-backend must be one of {CRITIC_BACKENDS}, got {name!r}")
    if name == "auto":
        name = "triton" if torch.device(device).type == "cuda" and _triton_available() else "torch"
    if name == "triton" and not _triton_available():
        raise ValueError("--critic-backend triton needs the triton package (pip install triton)")
    _critic_backend = name
    return name


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def q_values(params: Sequence[LayerParams], obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Q-values of an ensemble (possibly stacked from several critics): [E, B].

    The Triton kernels fuse the (obs, action) concatenation into the first layer; they have no LayerNorm, so
    critics with LayerNorm (SPOT on Adroit) always take the torch path.
    """
    if _critic_backend == "triton" and params[0][2] is None:
        from kernels import triton_q_values  # imported lazily: TRITON_INTERPRET must be set before (CPU tests)

        return triton_q_values(params, obs, action)
    return ensemble_forward(params, torch.cat([obs, action], dim=-1)).squeeze(-1)


class DeterministicActor(nn.Module):
    """pi(s) = tanh(MLP(s)), actions in [-1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, **kwargs):
        super().__init__()
        self.net = EnsembleMLP(1, obs_dim, act_dim, **kwargs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs).squeeze(0))


class DensityRatio(nn.Module):
    """w_phi(s, a) >= 0 of balanced replay (Off2On): MLP 256-256-1 with a softplus output."""

    def __init__(self, obs_dim: int, act_dim: int, **kwargs):
        super().__init__()
        self.net = EnsembleMLP(1, obs_dim + act_dim, 1, **kwargs)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.net(torch.cat([obs, action], dim=-1))).reshape(-1)


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam as every network here uses it; the fused kernel (one pass over all parameters) on CPU and CUDA."""
    return torch.optim.Adam(params, lr=lr, fused=True)


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, for every parameter."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
