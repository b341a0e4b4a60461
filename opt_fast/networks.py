"""Networks as ensembles with batched weights ``[E, in, out]``.

Every network in opt-fast is an :class:`EnsembleMLP`: twin critics are one module with E = 2, and several
ensembles (Q_off and Q_on) run as one batched call through :func:`stack_params` / :func:`ensemble_forward`, so a
fused backend (``kernels/``) sees a single ``[E, B, in]`` problem.

Many seeds are a batch dimension too: a network of S seeds holds S independent copies, seed-major
(seed s owns members ``[s k, (s + 1) k)``), each drawn from that seed's generator exactly as a one-seed run draws
it. Inputs are then ``[S, B, in]``, one batch per seed, and every member sees its seed's batch.
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
        seed_generators: one random generator per seed (None: torch's global one); the module holds
            ``n_members`` members per seed, E = n_members * len(seed_generators).
    """

    def __init__(
        self,
        n_members: int,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        layer_norm: bool = False,
        last_layer_init: float | None = None,
        seed_generators: Sequence[torch.Generator | None] = (None,),
    ):
        super().__init__()
        if n_members < 1 or in_dim < 1 or out_dim < 1 or not seed_generators:
            raise ValueError(f"EnsembleMLP needs positive sizes, got E={n_members}, in={in_dim}, out={out_dim}, "
                             f"{len(seed_generators)} seeds")
        self.n_seeds = len(seed_generators)
        self.n_members, self.in_dim, self.out_dim = n_members * self.n_seeds, in_dim, out_dim
        self.layer_norm = layer_norm
        widths = [in_dim, *hidden, out_dim]
        layers = [self._draw_layers(widths, n_members, last_layer_init, generator) for generator in seed_generators]
        self.weights = nn.ParameterList(torch.cat(w) for w in zip(*(weights for weights, _ in layers)))
        self.biases = nn.ParameterList(torch.cat(b) for b in zip(*(biases for _, biases in layers)))
        self.norm_weights = nn.ParameterList()
        self.norm_biases = nn.ParameterList()
        if layer_norm:
            for fan_out in widths[1:-1]:
                self.norm_weights.append(nn.Parameter(torch.ones(self.n_members, 1, fan_out)))
                self.norm_biases.append(nn.Parameter(torch.zeros(self.n_members, 1, fan_out)))

    @staticmethod
    def _draw_layers(widths: Sequence[int], n_members: int, last_layer_init: float | None,
                     generator: torch.Generator | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One seed's weights and biases, layer by layer (weight, then bias), from its generator."""
        weights, biases = [], []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(widths) - 2
            # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
            bound = last_layer_init if (last and last_layer_init is not None) else 1.0 / math.sqrt(fan_in)
            weights.append(torch.empty(n_members, fan_in, fan_out).uniform_(-bound, bound, generator=generator))
            biases.append(torch.empty(n_members, 1, fan_out).uniform_(-bound, bound, generator=generator))
        return weights, biases

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
        """``x`` [B, in] (shared by all members), [S, B, in] (one batch per seed) or [E, B, in] -> [E, B, out]."""
        return ensemble_forward(self.layer_params(), x)


def per_member(x: torch.Tensor, n_members: int) -> torch.Tensor:
    """``x`` [B, w] (shared), [G, B, w] (G groups of consecutive members, e.g. seeds) as [E, B, w] (a view where it
    can be)."""
    if x.dim() == 2:
        x = x.unsqueeze(0)
    groups = x.shape[0]
    if x.dim() != 3 or n_members % groups:
        raise ValueError(f"an input of shape {tuple(x.shape)} cannot feed {n_members} ensemble members")
    return x.unsqueeze(1).expand(groups, n_members // groups, *x.shape[1:]).reshape(n_members, *x.shape[1:])


def ensemble_forward(params: Sequence[LayerParams], x: torch.Tensor) -> torch.Tensor:
    """The reference (torch) ensemble MLP: batched matmul, bias, optional LayerNorm, ReLU between layers."""
    x = per_member(x, params[0][0].shape[0])
    for i, (weight, bias, norm_weight, norm_bias) in enumerate(params):
        x = torch.baddbmm(bias, x, weight)
        if i < len(params) - 1:
            if norm_weight is not None and norm_bias is not None:
                x = F.layer_norm(x, x.shape[-1:]) * norm_weight + norm_bias
            # In place: nothing else holds the pre-activation (baddbmm's backward needs only its inputs).
            x = F.relu(x, inplace=True)
    return x


def stack_params(*mlps: EnsembleMLP) -> list[LayerParams]:
    """Concatenate the members of several ensembles of the same shape and seeds into one ensemble's parameters,
    seed-major: seed s's members of every module, in module order, then seed s + 1's.

    Gradients flow back to each module's own parameters, so each keeps its own optimizer.
    """
    n_seeds = mlps[0].n_seeds
    if any(m.n_seeds != n_seeds for m in mlps):
        raise ValueError(f"stacked ensembles must hold the same seeds, got {[m.n_seeds for m in mlps]}")

    def interleave(parts: Sequence[torch.Tensor]) -> torch.Tensor:
        by_seed = [p.view(n_seeds, -1, *p.shape[1:]) for p in parts]
        return torch.cat(by_seed, dim=1).flatten(0, 1)

    per_module = [m.layer_params() for m in mlps]
    return [tuple(None if parts[0] is None else interleave(parts) for parts in zip(*layers))  # type: ignore[misc]
            for layers in zip(*per_module)]


class Critic(EnsembleMLP):
    """An ensemble of Q-functions Q_j(s, a) (twin critics: 2 per seed) evaluated by ``backend``; returns [E, B]."""

    def __init__(self, obs_dim: int, act_dim: int, n_heads: int = 2, backend: str = "torch", **kwargs):
        super().__init__(n_heads, obs_dim + act_dim, 1, **kwargs)
        self.backend = backend

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return q_values(self.layer_params(), obs, action, self.backend)


CRITIC_BACKENDS = ("torch", "triton", "auto")


def resolve_critic_backend(name: str, device: torch.device | str) -> str:
    """How critics are evaluated (``Config.critic_backend``): ``torch`` (batched matmuls), ``triton`` (the fused
    kernels of ``kernels/``), or for ``auto`` triton on CUDA and torch elsewhere. Each agent resolves it once and
    passes it to :func:`q_values`."""
    if name not in CRITIC_BACKENDS:
        raise ValueError(f"--critic-backend must be one of {CRITIC_BACKENDS}, got {name!r}")
    if name == "auto":
        name = "triton" if torch.device(device).type == "cuda" and _triton_available() else "torch"
    if name == "triton" and not _triton_available():
        raise ValueError("--critic-backend triton needs the triton package (pip install triton)")
    return name


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def q_values(params: Sequence[LayerParams], obs: torch.Tensor, action: torch.Tensor,
             backend: str = "torch") -> torch.Tensor:
    """Q-values of an ensemble (possibly stacked from several critics and seeds): [E, B]. ``obs`` and ``action``
    are [B, w] (shared) or [S, B, w] (one batch per seed); ``backend`` a resolved :func:`resolve_critic_backend`.

    The Triton kernels fuse the (obs, action) concatenation into the first layer; they have no LayerNorm, so
    critics with LayerNorm (SPOT on Adroit) always take the torch path.
    """
    if backend == "triton" and params[0][2] is None:
        from kernels import triton_q_values  # imported lazily: TRITON_INTERPRET must be set before (CPU tests)

        n_members = params[0][0].shape[0]
        if obs.dim() == 3 and obs.shape[0] != n_members:
            obs, action = per_member(obs, n_members), per_member(action, n_members)
        return triton_q_values(params, obs, action)
    return ensemble_forward(params, torch.cat([obs, action], dim=-1)).squeeze(-1)


def per_seed_output(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A one-member-per-seed network's output [S, B, w] for input ``x``: [B, w] when ``x`` had no seed dimension."""
    return out.squeeze(0) if x.dim() == 2 else out


class DeterministicActor(nn.Module):
    """pi(s) = tanh(MLP(s)), actions in [-1, 1]; obs [B, obs] (one seed) or [S, B, obs] -> actions of that shape."""

    def __init__(self, obs_dim: int, act_dim: int, **kwargs):
        super().__init__()
        self.net = EnsembleMLP(1, obs_dim, act_dim, **kwargs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(per_seed_output(self.net(obs), obs))


class DensityRatio(nn.Module):
    """w_phi(s, a) >= 0 of balanced replay (Off2On): MLP 256-256-1 with a softplus output; [B] or [S, B]."""

    def __init__(self, obs_dim: int, act_dim: int, **kwargs):
        super().__init__()
        self.net = EnsembleMLP(1, obs_dim + act_dim, 1, **kwargs)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)
        return F.softplus(per_seed_output(self.net(x), x)).squeeze(-1)


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam as every network here uses it; the fused kernel (one pass over all parameters) on CPU and CUDA."""
    return torch.optim.Adam(params, lr=lr, fused=True)


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, for every parameter."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
