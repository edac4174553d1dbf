"""ROLL's per-role `system_envs`: each of the role's Ray actors has them from its start (over the
top-level ones); a role in vroll's process sets them there when it starts."""

import logging
import os
from contextlib import ExitStack

import pytest

from conftest import write_yaml
from vroll.config import ConfigError, load_config
from vroll.config.no_effect import no_effect_keys


def config(tmp_path, **role_envs):
    data = {"seed": 1, "pretrain": "m", "system_envs": {"TOP": "1"},
            "actor_train": {"strategy_args": {"strategy_name": "fsdp2_train"}, "system_envs": role_envs},
            "rewards": {"math": {"reward_type": "math_rule", "system_envs": {"VROLL_REWARD_ENV": 3}}}}
    return write_yaml(tmp_path / "c.yaml", data)


def test_a_roles_system_envs_are_read_and_checked(tmp_path):
    cfg = load_config(config(tmp_path, NCCL_DEBUG="INFO", OMP_NUM_THREADS=2))
    assert cfg.actor_train.environment() == {"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": "2"}
    assert cfg.rewards["math"].environment() == {"VROLL_REWARD_ENV": "3"}
    assert not [k for k in no_effect_keys(cfg) if "system_envs" in k]
    with pytest.raises(ConfigError) as e:
        load_config(config(tmp_path, CUDA_VISIBLE_DEVICES="3", BAD={"a": 1}))
    assert sorted(str(i) for i in e.value.issues) == [
        "actor_train.system_envs.BAD: {'a': 1}: an environment value is a string, a number or a boolean",
        "actor_train.system_envs.CUDA_VISIBLE_DEVICES: '3': vroll sets it in each of the role's actors from "
        "device_mapping; choose the role's devices there"]


def test_a_role_in_this_process_sets_its_envs_here(tmp_path, monkeypatch, caplog):
    from vroll.roles.launcher import launch_reward_models

    monkeypatch.delenv("VROLL_REWARD_ENV", raising=False)
    cfg = load_config(config(tmp_path))
    with caplog.at_level(logging.INFO), ExitStack() as stack:
        assert launch_reward_models(cfg, stack) == {}  # a rule worker: no model, scores in this process
    assert os.environ["VROLL_REWARD_ENV"] == "3"
    assert "rewards.math runs in vroll's process: its system_envs (VROLL_REWARD_ENV) are set there, for every " \
           "role of the process" in caplog.text


def test_each_actor_of_a_role_starts_with_its_envs(monkeypatch):
    """Real Ray actors (a local Ray on this machine's CPU slots): the role's value wins over the
    driver's (the top-level system_envs), and a variable the host drops is kept when the role sets it."""
    from vroll.cluster.actors import ActorGroup

    monkeypatch.setenv("VROLL_ENV_A", "top")
    monkeypatch.setenv("VROLL_ENV_C", "top")
    group = ActorGroup("role", [0], 1, "cpu", label="rank", call_timeout_s=120,
                       env={"VROLL_ENV_A": "role", "VROLL_ENV_B": "b"}, drop_env=("VROLL_ENV_B", "VROLL_ENV_C"))
    try:
        seen = {}
        for name in ("VROLL_ENV_A", "VROLL_ENV_B", "VROLL_ENV_C"):
            group.build("os:getenv", lambda m: (name, "unset"))  # the actor's target: the variable's value
            seen[name] = group.call(group.members, "read", lambda m: m.actor.call.remote("__str__"))[0]
    finally:
        group.close()
    assert seen == {"VROLL_ENV_A": "role", "VROLL_ENV_B": "b", "VROLL_ENV_C": "unset"}
