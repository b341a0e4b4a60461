"""The critic backends train identically: Triton kernels (interpreted on CPU) against batched torch matmuls."""
import pytest
import torch

from opt_fast.agents.opt import OPTAgent
from opt_fast.agents.common import Batch
from opt_fast.config import Config
from opt_fast.networks import resolve_critic_backend

pytest.importorskip("triton")


def test_triton_backend_updates_match_torch():
    torch.manual_seed(0)
    reference = OPTAgent(5, 2, Config(hidden=(32, 32), critic_backend="torch"))
    torch.manual_seed(0)
    fused = OPTAgent(5, 2, Config(hidden=(32, 32), critic_backend="triton"))
    for name, module in reference.modules().items():  # the same networks, evaluated two ways
        for a, b in zip(module.state_dict().values(), fused.modules()[name].state_dict().values()):
            assert torch.equal(a, b), name
    gen = torch.Generator().manual_seed(3)
    data = [Batch(torch.randn(40, 5, generator=gen), torch.rand(40, 2, generator=gen) * 2 - 1,
                  torch.randn(40, generator=gen), torch.randn(40, 5, generator=gen), torch.zeros(40))
            for _ in range(6)]
    for agent in (reference, fused):
        torch.manual_seed(1)
        for step in range(2):
            agent.backbone.offline_update(data[step], step)
            agent.pretrain_update(data[step], data[step + 1], step)
            agent.finetune_update(data[step], data[step + 1], data[step + 2], 0.5, 0.1, step)
    for name, module in reference.modules().items():
        for (key, a), b in zip(module.state_dict().items(), fused.modules()[name].state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")


def test_backend_selection():
    assert resolve_critic_backend("auto", "cpu") == "torch"
    assert OPTAgent(5, 2, Config(hidden=(8, 8))).config.critic_backend == "torch"  # auto, resolved per agent
    with pytest.raises(ValueError, match="--critic-backend"):
        resolve_critic_backend("cuda-magic", "cpu")
