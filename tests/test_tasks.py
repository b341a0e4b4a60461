"""``--env`` is parsed once: the config's task (family, kind, data source, env) is what run naming, data loading,
validation, the trainer and the report read."""
import pytest

from opt_fast import tasks
from opt_fast.config import Config, validate
from opt_fast.pipeline import open_run
from opt_fast.runs import run_dir_for
from test_pipeline import dataset, tiny_config  # noqa: F401


@pytest.mark.parametrize("env,family,kind,label,source,env_name", [
    ("hopper-medium-replay", "hopper", "medium-replay", "hopper-medium-replay-v2", "d4rl", "hopper"),
    ("antmaze-umaze-diverse", "antmaze", "umaze-diverse", "antmaze-umaze-diverse-v2", "d4rl", "antmaze-umaze"),
    ("door-cloned", "door", "cloned", "door-cloned-v1", "d4rl", "door"),
    ("minari:D4RL/door/human-v2", "door", "human", "minari-D4RL-door-human-v2", "minari", "door"),
])
def test_a_task_says_what_env_names(env, family, kind, label, source, env_name):
    task = Config(env=env).task
    assert (task.family, task.kind, task.label, task.data_source, task.env_name) == (family, kind, label, source,
                                                                                    env_name)


def test_the_name_is_parsed_once_per_config(tmp_path, dataset, monkeypatch):  # noqa: F811
    calls = []
    parse = tasks.parse_task
    monkeypatch.setattr(tasks, "parse_task", lambda env: calls.append(env) or parse(env))
    config = tiny_config()
    validate(config)
    run_dir = run_dir_for(tmp_path, config, dataset.content_digest)
    trainer = open_run(config, run_dir, dataset, resume=False)
    trainer.run(after="offline")
    assert calls == ["hopper-random"]
