"""Roles on a Ray cluster of two nodes, joined through `ray_address`: Ray's own test cluster runs two
raylets on this machine, so node-by-node placement and cross-node weight updates are real."""

import pytest
import torch

from conftest import engine_config, hf_greedy_texts, write_yaml
from vroll.config import load_config
from vroll.config.schema import GeneratingArgs

PROMPTS = ["What is 12+7?", "What is 45-18? The answer is", "hello there", "What is 6*7?"]
GREEDY = GeneratingArgs(max_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def two_nodes():
    """Two raylets with token authentication, as Ray 2.60 clusters have it (the token is the local
    one, ~/.ray/auth_token, made when missing: what a user copies from the head node)."""
    import os

    import ray
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
    from ray._raylet import Config
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()  # vroll must join this cluster, not start its own
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")  # Ray caches the mode: make this process see it
    ensure_token_if_auth_enabled(create_token_if_missing=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved
        Config.initialize("")


def test_engines_are_placed_node_by_node_and_weights_reach_both(two_nodes, tiny_model, hf, tmp_path):
    from vroll.cluster.ray_session import alive_nodes
    from vroll.roles.launcher import launch_role

    data = engine_config(tiny_model, engine_call_timeout_s=180)
    data.update(ray_address=two_nodes.address, num_gpus_per_node=1)  # one slot per node: engine k on node k
    data["actor_infer"]["device_mapping"] = [0, 1]
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    with launch_role(cfg.actor_infer, seed=cfg.seed, ray_address=cfg.ray_address,
                        devices_per_node=cfg.num_gpus_per_node) as role:
        nodes = [n["NodeID"] for n in alive_nodes()]
        assert len(nodes) == 2 and [i["node_id"] for i in role.info()] == nodes
        model, tok = hf
        assert [r.samples[0].token_ids for r in role.generate(PROMPTS, GREEDY)] == hf_greedy_texts(hf, PROMPTS, 12)
        g = torch.Generator().manual_seed(5)
        weights = {k: v + torch.randn(v.shape, generator=g) * 0.02 for k, v in model.state_dict().items()}
        version = role.update_weights(weights)  # one bucket in the object store, read on both nodes
        moved = type(model)(model.config).eval()
        moved.load_state_dict(weights)
        results = role.generate(PROMPTS, GREEDY)
        assert {r.weight_version for r in results} == {version}
        assert [r.samples[0].token_ids for r in results] == hf_greedy_texts((moved, tok), PROMPTS, 12)


def test_trainer_ranks_span_the_two_nodes(two_nodes, tiny_model):
    from test_trainer import SEQS, padded, train_role
    from vroll.cluster.ray_session import alive_nodes
    from vroll.roles.launcher import launch_role

    role = train_role(tiny_model)
    role.strategy_args.strategy_config["cpu_threads_per_rank"] = 1
    ids, mask = padded(SEQS + [[3, 4, 5]])
    tokens = (mask[:, 1:] * mask[:, :-1]).sum()

    def loss_fn(micro, logp, entropy):
        m = micro["attention_mask"][:, 1:] * micro["attention_mask"][:, :-1]
        return -(logp * m).sum() / tokens, {}

    with launch_role(role, ray_address=two_nodes.address, devices_per_node=1) as trainer:
        assert trainer.world_size == 2 and trainer.node_ids == [n["NodeID"] for n in alive_nodes()]
        before = dict(trainer.named_weights())
        assert trainer.train_step([{"input_ids": ids, "attention_mask": mask}], loss_fn)["train/grad_norm"] > 0
        after = dict(trainer.named_weights())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_mapping_beyond_the_cluster_is_named_before_any_rank_starts(two_nodes, tiny_model):
    from test_trainer import train_role
    from vroll.roles.ray_trainer import TrainerFailure
    from vroll.roles.launcher import launch_role

    role = train_role(tiny_model)
    role.device_mapping = [0, 1, 2]
    role.strategy_args.strategy_config["cpu_threads_per_rank"] = 1
    with pytest.raises(TrainerFailure, match=r"actor_train.device_mapping: devices \[2\] need node 2, but the "
                                             r"cluster has 2 node\(s\) of 1 devices"):
        launch_role(role, ray_address=two_nodes.address, devices_per_node=1)
