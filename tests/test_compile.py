"""``--compile``: the update steps compile without graph breaks and train like eager mode (on CUDA, through CUDA
graphs: ``mode="reduce-overhead"``)."""
import copy
import dataclasses

import pytest
import torch

from opt_fast.agents.opt import OPTAgent
from opt_fast.agents.common import Batch, _adam, _adam_group, _lerp, compiled_updates, eager_updates
from opt_fast.config import Config


def batches(n_batches, seed):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
        out.append(Batch(r(64, 5), torch.rand(64, 2, generator=gen) * 2 - 1, r(64), r(64, 5),
                         (torch.rand(64, generator=gen) < 0.1).float()))
    return out


@pytest.fixture
def same_random_numbers():
    # Inductor draws random numbers with its own generator; use eager's so both modes see the same noise.
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        yield


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_compiled_updates_match_eager(device, same_random_numbers, capsys):
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    eager = OPTAgent(5, 2, Config(hidden=(32, 32), device=device))
    compiled = copy.deepcopy(eager)
    compiled.compile()
    data = [dataclasses.replace(b, **{f.name: getattr(b, f.name).to(device) for f in dataclasses.fields(b)})
            for b in batches(3 * 6, seed=1)]
    counters.clear()
    for agent in (eager, compiled):
        torch.manual_seed(1)
        for step in range(6):
            agent.backbone.offline_update(data[step], step)
        agent.start_finetuning()
        for step in range(6):
            off, on, batch = data[3 * step: 3 * step + 3]
            agent.finetune_update(off, on, batch, kappa=0.4, online_progress=step / 6, step=step)
    assert "torch.compile failed" not in capsys.readouterr().err
    if device == "cuda":  # the compiled updates ran as CUDA graphs: Inductor skipped none of them
        assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    for name, module in eager.modules().items():
        for (key, a), b in zip(module.state_dict().items(), compiled.modules()[name].state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")


def test_update_losses_have_no_graph_breaks():
    torch.manual_seed(0)
    agent = OPTAgent(5, 2, Config(hidden=(16,)))
    off, on, batch = batches(3, seed=2)
    for fn, args in [(agent._finetune_critic_loss, (batch,)), (agent._density_step_loss, (off, on)),
                     (agent._priorities, (batch, off)),
                     (agent._finetune_actor_loss, (batch.obs, torch.tensor(0.3), torch.tensor(0.5))),
                     (agent.backbone._critic_loss, (batch,)), (agent.backbone._bc_actor_loss, (batch,))]:
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(fn)(*args)
        assert explanation.graph_break_count == 0, (fn.__qualname__, explanation.break_reasons)
        assert explanation.graph_count == 1


def test_parameter_updates_compile_to_one_graph_and_step_like_torch_adam():
    """The compiled Adam and Polyak steps are one graph each, and match torch's fused Adam and the eager lerps."""
    torch.manual_seed(0)
    eager = OPTAgent(5, 2, Config(hidden=(16,)))
    compiled = copy.deepcopy(eager)
    apply = compiled_updates()
    for agent, updates in ((eager, eager_updates), (compiled, apply)):
        gen = torch.Generator().manual_seed(3)
        for _ in range(4):  # the first step creates Adam's state (eagerly), the others run the compiled graph
            for p in agent.backbone.critic.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            updates([agent.backbone.critic_opt], [(agent.backbone.critic_target, agent.backbone.critic)], tau=0.05)
    for name in ("critic", "critic_target"):
        for a, b in zip(eager.modules()[name].parameters(), compiled.modules()[name].parameters()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    state = _adam_group(compiled.backbone.critic_opt)
    assert float(state[4][0]) == 4.0  # Adam's own step count moved on: checkpoints stay torch Adam's
    torch._dynamo.reset()
    critic = compiled.backbone
    for kernel, args in ((_adam, _adam_group(critic.critic_opt)),
                         (_lerp, (list(critic.critic_target.parameters()), list(critic.critic.parameters()), 0.05))):
        explanation = torch._dynamo.explain(kernel)(*args)
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
