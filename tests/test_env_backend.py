"""``--env-backend mjx``: the trainer collects and evaluates on MJX through the same code as on gymnasium."""
import numpy as np
import pytest
import torch

pytest.importorskip("mujoco.mjx")

from opt_fast.config import Config, resolve  # noqa: E402
from opt_fast.evaluation import episode_seed, evaluate_seed_batch, summarize  # noqa: E402
from opt_fast.envs.mjx import MJXSeedEnvs  # noqa: E402
from opt_fast.pipeline import open_run, open_seed_batch  # noqa: E402
from opt_fast.metrics import reproducible_records
from test_pipeline import dataset, final_params, run_with_interrupt, tiny_config  # noqa: E402,F401


def test_episodes_restart_from_their_own_streams():
    first = MJXSeedEnvs("hopper", seeds=[0]).reset([5])[0]
    assert first.shape == (11,) and first.dtype == np.float32
    envs = MJXSeedEnvs("hopper", seeds=[1])
    np.testing.assert_array_equal(envs.reset([5])[0], first)  # the reset seed decides the episode
    with pytest.raises(RuntimeError, match="no episode has ended"):
        envs.next_episode(0)
    # Full-throttle actions make the hopper fall within a few dozen steps: the episode ends as terminated and
    # next_episode() hands out the auto-reset's fresh start (near the initial pose: noise of 5e-3).
    steps = seed_rollout(envs, np.tile(np.array([1.0, -1.0, 1.0], np.float32), (120, 1, 1)))
    ends = [i for i, [(_, _, terminated, _)] in enumerate(steps) if terminated]
    assert ends and not any(truncated for [(*_, truncated)] in steps)
    restarted = steps[ends[0]][0][0]
    np.testing.assert_allclose(restarted[:5], first[:5], atol=2e-2)
    assert not np.array_equal(restarted, first)  # a new noise draw from the env's own stream


def seed_rollout(envs: MJXSeedEnvs, actions: np.ndarray) -> list[list[tuple]]:
    """Steps of every env with ``actions`` [T, S, act], taking the next episode where one ends, as the trainer."""
    steps = []
    for step_actions in actions:
        results = envs.step(step_actions)
        row_steps = []
        for row, (obs, reward, terminated, truncated) in enumerate(results):
            if terminated or truncated:
                obs = envs.next_episode(row)
            row_steps.append((obs, reward, terminated, truncated))
        steps.append(row_steps)
    return steps


def test_each_row_of_a_seed_batch_is_its_one_seed_env_and_restores_alone():
    seeds = [3, 11]
    batch = MJXSeedEnvs("hopper", seeds=seeds)
    # Full throttle ends episodes (terminations) within the horizon, so the auto-resets' noise streams are compared.
    actions = np.random.default_rng(0).uniform(-1, 1, (90, 2, 3)).astype(np.float32)
    actions[:, :, 0] = 1.0
    first = batch.reset(seeds)
    steps = seed_rollout(batch, actions)
    assert any(step[0][2] for step in steps), "the horizon should see a termination"
    for row, seed in enumerate(seeds):
        alone = MJXSeedEnvs("hopper", seeds=[seed])
        np.testing.assert_array_equal(alone.reset([seed])[0], first[row])
        for step, alone_step in zip(steps, seed_rollout(alone, actions[:, row:row + 1])):
            np.testing.assert_allclose(step[row][0], alone_step[0][0], rtol=0, atol=1e-5)
            assert step[row][1:] == pytest.approx(alone_step[0][1:], abs=1e-4)

    # A mid-episode row state restores into a one-env batch and continues (to float32 rounding: XLA compiles the
    # one-env step differently from the two-env one).
    state = batch.state_dict(1)
    later = np.random.default_rng(1).uniform(-1, 1, (60, 2, 3)).astype(np.float32)
    expected = [step[1] for step in seed_rollout(batch, later)]
    other = MJXSeedEnvs("hopper", seeds=[123])
    other.load_state_dict(0, state)
    for (obs, reward, term, trunc), [(obs2, reward2, term2, trunc2)] in zip(expected,
                                                                            seed_rollout(other, later[:, 1:])):
        np.testing.assert_allclose(obs, obs2, rtol=0, atol=1e-5)
        assert (reward, term, trunc) == (pytest.approx(reward2, abs=1e-4), term2, trunc2)
    with pytest.raises(ValueError, match="another shape"):
        MJXSeedEnvs("walker2d", seeds=[0]).load_state_dict(0, state)


def test_mjx_run_resumes_to_the_same_result(tmp_path, dataset):  # noqa: F811
    config = tiny_config(env_backend="mjx")
    whole = open_run(config, tmp_path / "whole", dataset, resume=False)
    [summary] = whole.run()
    assert summary["online_steps"] == 100 and np.isfinite(summary["final_score"])
    resumed = run_with_interrupt(config, tmp_path / "resumed", dataset, "finetune", "online_step", 60)
    for name, value in final_params(whole).items():
        torch.testing.assert_close(final_params(resumed)[name], value, rtol=0, atol=0, msg=name)
    assert reproducible_records(tmp_path / "whole" / "metrics.jsonl") == \
        reproducible_records(tmp_path / "resumed" / "metrics.jsonl")
    # The backend is part of the offline phase's identity: gymnasium runs never reuse an MJX offline phase.
    assert config.digest() != tiny_config().digest()


def test_mjx_backend_is_refused_where_it_has_no_env():
    with pytest.raises(ValueError, match="--env-backend mjx simulates hopper, walker2d, halfcheetah, ant"):
        resolve(Config(budget="smoke"), {"env": "door-cloned", "env_backend": "mjx"}, "cloned", "door")
    with pytest.raises(ValueError, match="--env-backend must be one of gymnasium, mjx, got 'brax'"):
        resolve(Config(budget="smoke"), {"env": "hopper-random", "env_backend": "brax"}, "random")


def test_a_seed_batch_on_mjx_steps_every_seed_in_one_batch_as_its_one_seed_run(tmp_path, dataset):  # noqa: F811
    seeds = (0, 1)
    configs = [tiny_config(env_backend="mjx", policy_noise=0.0, seed=s, seed_batch=seeds) for s in seeds]
    batched = open_seed_batch(configs, [tmp_path / f"b{s}" for s in seeds], dataset, resume=False)
    assert isinstance(batched.envs, MJXSeedEnvs)
    batched.run()
    for index, seed in enumerate(seeds):
        alone = open_run(tiny_config(env_backend="mjx", policy_noise=0.0, seed=seed), tmp_path / f"s{seed}", dataset,
                         resume=False)
        alone.run()
        rows = np.arange(alone.runs[0].online_buffer.size)
        got, want = (t.runs[i].online_buffer.gather(rows) for t, i in ((batched, index), (alone, 0)))
        for key in ("obs", "reward", "done"):
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-3, err_msg=f"seed {seed}: {key}")


def test_batched_evaluation_plays_each_episode_as_its_own_env():
    """Every seed's evaluation episodes in one MJX batch: each row is the episode a one-env batch reset with that
    episode's seed plays, cut at its own end (the rows that ended go on, unrecorded, until all have ended)."""
    seeds, episodes = [4, 9], 2

    def policy(obs: torch.Tensor) -> torch.Tensor:  # deterministic, falls within ~30-80 steps
        return torch.tanh(3.0 * obs[..., 2:5])

    envs = MJXSeedEnvs("hopper", seeds=[0] * (len(seeds) * episodes))
    batched = evaluate_seed_batch(policy, envs, seeds, episodes)
    assert [len(per_seed) for per_seed in batched] == [episodes, episodes]
    lengths = set()
    for s, seed in enumerate(seeds):
        for e in range(episodes):
            alone = MJXSeedEnvs("hopper", seeds=[0])
            obs = alone.reset([episode_seed(seed, e)])[0]
            rewards = []
            while True:
                action = policy(torch.as_tensor(obs)[None, None])[0, 0].numpy()
                [(obs, reward, terminated, truncated)] = alone.step(action[None])
                rewards.append(reward)
                if terminated or truncated:
                    break
            episode = batched[s][e]
            assert len(episode.rewards) == len(rewards) and episode.terminated == terminated
            np.testing.assert_allclose(episode.rewards, rewards, rtol=0, atol=1e-3)
            lengths.add(len(rewards))
    assert len(lengths) > 1, "the episodes should end at different steps"
    assert summarize(batched[0])["return_mean"] == pytest.approx(np.mean([sum(e.rewards) for e in batched[0]]))
