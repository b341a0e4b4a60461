"""The Triton ensemble MLP (kernels/) held against the torch reference of opt_fast.networks.

Without CUDA the kernels run in Triton's interpreter, which must be chosen before ``kernels`` is first imported.
Tolerances (float32, IEEE products, fp32 accumulation): outputs and every gradient within
rtol = 1e-5 and atol = 1e-5 * max(1, max|reference|); only the summation order differs from torch's baddbmm.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from kernels import ensemble_mlp, triton_ensemble_forward, triton_q_values  # noqa: E402
from opt_fast.networks import Critic, EnsembleMLP, ensemble_forward, q_values  # noqa: E402

DEVICE = "cpu" if ensemble_mlp.INTERPRETED else "cuda"
TOL = 1e-5


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)  # parameters and inputs alike


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=TOL, atol=TOL * scale)


def member_view(x: torch.Tensor, n_members: int) -> torch.Tensor:
    """A shared [B, d] input as the [E, B, d] the torch reference needs when the other input is per member."""
    return x.expand(n_members, *x.shape) if x.dim() == 2 else x


# (E, B, obs_dim, act_dim, hidden): ragged batches around the 16/32/64-row tiles, widths around the 32-wide
# input steps and H2 chunks, hidden widths that are not powers of two.
CRITIC_SHAPES = [
    (1, 1, 3, 1, (32, 32)),
    (2, 17, 17, 6, (32, 64)),
    (4, 70, 40, 8, (48, 80)),
    (3, 65, 11, 3, (64, 32)),
]


@pytest.mark.parametrize("shape", CRITIC_SHAPES)
@pytest.mark.parametrize(
    "per_member", [(False, False), (True, True), (False, True)], ids=["shared", "members", "mixed"]
)
def test_q_values_and_all_gradients_match_torch(shape, per_member):
    n_members, batch, obs_dim, act_dim, hidden = shape
    critic = Critic(obs_dim, act_dim, n_heads=n_members, hidden=hidden).to(DEVICE)
    obs_shape = (n_members, batch, obs_dim) if per_member[0] else (batch, obs_dim)
    act_shape = (n_members, batch, act_dim) if per_member[1] else (batch, act_dim)
    obs = torch.randn(obs_shape, device=DEVICE).requires_grad_()
    action = torch.randn(act_shape, device=DEVICE).requires_grad_()
    inputs = [obs, action, *critic.parameters()]

    q = triton_q_values(critic.layer_params(), obs, action)
    q_ref = q_values(critic.layer_params(), member_view(obs, n_members), member_view(action, n_members))
    assert q.shape == (n_members, batch)
    assert_close(q, q_ref)

    dq = torch.randn(q.shape, device=DEVICE)
    for grad, grad_ref in zip(torch.autograd.grad(q, inputs, dq), torch.autograd.grad(q_ref, inputs, dq)):
        assert grad.shape == grad_ref.shape
        assert_close(grad, grad_ref)


def test_real_width_256():
    n_members, batch, obs_dim, act_dim = 4, 5, 17, 6
    critic = Critic(obs_dim, act_dim, n_heads=n_members).to(DEVICE)  # paper: 256-256
    obs = torch.randn(batch, obs_dim, device=DEVICE).requires_grad_()
    action = torch.randn(batch, act_dim, device=DEVICE).requires_grad_()
    inputs = [obs, action, *critic.parameters()]
    q = triton_q_values(critic.layer_params(), obs, action)
    q_ref = critic(obs, action)
    assert_close(q, q_ref)
    for grad, grad_ref in zip(torch.autograd.grad(q.sum(), inputs), torch.autograd.grad(q_ref.sum(), inputs)):
        assert_close(grad, grad_ref)


def test_hand_computed_critic():
    """Two members with one unit per layer, values worked out by hand, ReLUs both active and dead."""
    critic = Critic(1, 1, n_heads=2, hidden=(1, 1)).to(DEVICE)
    # Member 0: h1 = relu(o + a - 1), h2 = relu(2 h1), q = 3 h2 + 1, so q = 6 relu(o + a - 1) + 1.
    # Member 1: h1 = relu(2a - o), h2 = relu(0.5 - h1), q = -h2.
    values = [  # per layer: (weight of member 0, of member 1), (bias of member 0, of member 1)
        (([[1.0], [1.0]], [[-1.0], [2.0]]), ([[-1.0]], [[0.0]])),
        (([[2.0]], [[-1.0]]), ([[0.0]], [[0.5]])),
        (([[3.0]], [[-1.0]]), ([[1.0]], [[0.0]])),
    ]
    with torch.no_grad():
        for (weight, bias, _, _), (weight_values, bias_values) in zip(critic.layer_params(), values):
            weight.copy_(torch.tensor(weight_values))
            bias.copy_(torch.tensor(bias_values))
    obs = torch.tensor([[1.0], [0.0], [0.25]], device=DEVICE, requires_grad=True)
    action = torch.tensor([[2.0], [0.0], [0.25]], device=DEVICE, requires_grad=True)
    q = triton_q_values(critic.layer_params(), obs, action)
    # Member 0: o + a - 1 = 2, -1, -0.5 -> q = 13, 1, 1. Member 1: 2a - o = 3, 0, 0.25 -> q = 0, -0.5, -0.25.
    expected = torch.tensor([[13.0, 1.0, 1.0], [0.0, -0.5, -0.25]], device=DEVICE)
    torch.testing.assert_close(q, expected, rtol=0.0, atol=1e-6)

    d_obs, d_action = torch.autograd.grad(q.sum(), [obs, action])
    # Member 0 contributes 6 to both where o + a > 1 (row 0 only); member 1 contributes -(-1) * (-1, 2)
    # where 0 < 2a - o < 0.5 (row 2 only): d/do = -1, d/da = 2.
    torch.testing.assert_close(d_obs, torch.tensor([[6.0], [0.0], [-1.0]], device=DEVICE), rtol=0.0, atol=1e-6)
    torch.testing.assert_close(d_action, torch.tensor([[6.0], [0.0], [2.0]], device=DEVICE), rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("per_member", [False, True], ids=["shared", "members"])
def test_ensemble_forward_with_wide_output_matches_torch(per_member):
    n_members, batch, in_dim, out_dim = 3, 33, 9, 20  # out wider than one 16-column tile
    mlp = EnsembleMLP(n_members, in_dim, out_dim, hidden=(32, 96)).to(DEVICE)
    shape = (n_members, batch, in_dim) if per_member else (batch, in_dim)
    x = torch.randn(shape, device=DEVICE).requires_grad_()
    inputs = [x, *mlp.parameters()]
    y = triton_ensemble_forward(mlp.layer_params(), x)
    y_ref = ensemble_forward(mlp.layer_params(), x)
    assert y.shape == (n_members, batch, out_dim)
    assert_close(y, y_ref)
    dy = torch.randn(y.shape, device=DEVICE)
    for grad, grad_ref in zip(torch.autograd.grad(y, inputs, dy), torch.autograd.grad(y_ref, inputs, dy)):
        assert_close(grad, grad_ref)


def test_actor_gradient_through_detached_critic():
    """TD3's actor loss: -Q(s, pi(s)) with the critic cut from the graph; only the action gets a gradient."""
    critic = Critic(5, 2, n_heads=2, hidden=(32, 32)).to(DEVICE)
    params = [tuple(None if p is None else p.detach() for p in layer) for layer in critic.layer_params()]
    obs = torch.randn(19, 5, device=DEVICE)
    action = torch.randn(19, 2, device=DEVICE).requires_grad_()
    q = triton_q_values(params, obs, action)
    (d_action,) = torch.autograd.grad(-q[0].mean(), [action])
    (d_ref,) = torch.autograd.grad(-q_values(params, obs, action)[0].mean(), [action])
    assert_close(d_action, d_ref)
    assert d_action.abs().max() > 0


def test_no_grad_forward_matches_and_records_nothing():
    critic = Critic(4, 2, n_heads=2, hidden=(32, 32)).to(DEVICE)
    obs = torch.randn(7, 4, device=DEVICE)
    action = torch.randn(7, 2, device=DEVICE)
    with torch.no_grad():
        q = triton_q_values(critic.layer_params(), obs, action)
        q_ref = q_values(critic.layer_params(), obs, action)
    assert q.grad_fn is None and not q.requires_grad
    assert_close(q, q_ref)


def test_second_order_gradients_match_torch():
    """OPT's meta-adaptation differentiates a gradient (create_graph=True); the backend must support it."""
    critic = Critic(6, 3, n_heads=2, hidden=(32, 32)).to(DEVICE)
    obs = torch.randn(21, 6, device=DEVICE)
    action = torch.randn(21, 3, device=DEVICE)
    params = [p for weight, bias, _, _ in critic.layer_params() for p in (weight, bias)]

    def meta_loss(q_fn) -> torch.Tensor:
        loss = q_fn(critic.layer_params(), obs, action).pow(2).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        stepped = [p - 0.1 * g for p, g in zip(params, grads)]
        inner = [(stepped[i], stepped[i + 1], None, None) for i in range(0, len(stepped), 2)]
        return loss + q_fn(inner, obs, action).pow(2).mean()

    outer = torch.autograd.grad(meta_loss(triton_q_values), params)
    outer_ref = torch.autograd.grad(meta_loss(q_values), params)
    for grad, grad_ref in zip(outer, outer_ref):
        assert_close(grad, grad_ref)


def test_tf32_stays_within_tf32_rounding():
    """tf32 products (10-bit mantissa) are an opt-in; they must stay within ~1e-3 of the fp32 reference."""
    critic = Critic(8, 3, n_heads=2, hidden=(64, 64)).to(DEVICE)
    obs = torch.randn(24, 8, device=DEVICE)
    action = torch.randn(24, 3, device=DEVICE)
    q = triton_q_values(critic.layer_params(), obs, action, tf32=True)
    torch.testing.assert_close(q, q_values(critic.layer_params(), obs, action), rtol=1e-2, atol=1e-2)


def test_compiles_as_one_graph():
    """The agents compile their losses: the kernels are custom ops, opaque to dynamo, so there is no graph break."""
    critic = Critic(5, 2, n_heads=2, hidden=(32, 32)).to(DEVICE)
    obs = torch.randn(9, 5, device=DEVICE)
    action = torch.randn(9, 2, device=DEVICE).requires_grad_()
    inputs = [action, *critic.parameters()]

    def loss(params, obs, action):
        return triton_q_values(params, obs, action).pow(2).mean()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    grads = torch.autograd.grad(compiled(critic.layer_params(), obs, action), inputs)
    grads_ref = torch.autograd.grad(q_values(critic.layer_params(), obs, action).pow(2).mean(), inputs)
    for grad, grad_ref in zip(grads, grads_ref):
        assert_close(grad, grad_ref)


def test_custom_op_registration():
    """torch.library.opcheck: schema, fake (meta) shapes, autograd registration and AOT tracing of the ops."""
    params = EnsembleMLP(2, 7, 1, hidden=(32, 32)).to(DEVICE).layer_params()
    weights = [p for weight, bias, _, _ in params for p in (weight, bias)]
    obs = torch.randn(9, 5, device=DEVICE).expand(2, 9, 5)
    action = torch.randn(2, 9, 2, device=DEVICE).requires_grad_()
    torch.library.opcheck(ensemble_mlp._forward_op, (obs, action, *weights, "ieee", True))


def layers(n_members=2, widths=(5, 32, 32, 1), layer_norm=False, dtype=torch.float32):
    return EnsembleMLP(n_members, widths[0], widths[-1], hidden=widths[1:-1], layer_norm=layer_norm).to(
        device=DEVICE, dtype=dtype
    ).layer_params()


@pytest.mark.parametrize(
    ("params", "obs_shape", "action_shape", "match"),
    [
        (layers(layer_norm=True), (4, 3), (4, 2), "no LayerNorm"),
        (layers(widths=(5, 32, 1)), (4, 3), (4, 2), "exactly 3 layers"),
        (layers(dtype=torch.float64), (4, 3), (4, 2), "float32"),
        (layers(), (4, 3), (4, 3), "must equal the first layer's input width 5"),
        (layers(widths=(5, 32, 32, 2)), (4, 3), (4, 2), "one output"),
        (layers(), (4, 3), (5, 2), r"action must be \[4, width\]"),
        (layers(), (3, 4, 3), (4, 2), r"obs must be \[B, width\] or \[E=2, B, width\]"),
    ],
    ids=["layer-norm", "depth", "dtype", "widths", "outputs", "batch", "members"],
)
def test_q_values_rejects_bad_input(params, obs_shape, action_shape, match):
    obs = torch.zeros(obs_shape, device=DEVICE)
    action = torch.zeros(action_shape, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        triton_q_values(params, obs, action)


def test_wrong_device_names_the_fix(monkeypatch):
    monkeypatch.setattr(ensemble_mlp, "INTERPRETED", not ensemble_mlp.INTERPRETED)
    expected = "TRITON_INTERPRET=1" if DEVICE == "cpu" else "interpreter mode"
    with pytest.raises(ValueError, match=expected):
        triton_q_values(layers(), torch.zeros(4, 3, device=DEVICE), torch.zeros(4, 2, device=DEVICE))
