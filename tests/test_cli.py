"""The command line as a user runs it: exit codes, messages without tracebacks, result files."""

import json
import os
import socket
import subprocess
import sys


from conftest import REPO, assert_gone_within, engine_config, interruptible, write_yaml

VROLL = [sys.executable, "-m", "vroll.cli.main"]


def run(*args, timeout=300):
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    return subprocess.run(VROLL + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


def test_validate_prints_the_resolved_config():
    r = run("validate", "examples/guide_actor_infer.yaml", "--platform", "cuda", "response_length=512")
    assert r.returncode == 0, r.stderr
    assert "max_new_tokens: 512" in r.stdout
    assert "- 11" in r.stdout  # device_mapping resolved to 0..11


def test_validate_names_rolls_keys_that_have_no_effect_here():
    r = run("validate", "examples/guide_actor_infer.yaml", "--platform", "cuda", "mask_type=all", "add_len_reward=true")
    assert r.returncode == 0, r.stderr
    warning = [line for line in r.stderr.splitlines() if "no effect here" in line]
    assert len(warning) == 1 and "mask_type (ROLL declares it and never reads it)" in warning[0]
    assert "add_len_reward" in warning[0] and "use_reward_scaling" not in warning[0]  # only what the file sets


def test_validate_reports_all_errors_without_traceback(tmp_path):
    data = engine_config("models/tiny")
    data["actor_infer"]["generating_args"]["top_pp"] = 0.9
    data["actor_infer"]["strategy_args"]["strategy_config"]["block_size"] = 16
    r = run("validate", write_yaml(tmp_path / "c.yaml", data), "--platform", "cpu")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "2 problems" in r.stderr
    assert "actor_infer.generating_args.top_pp: unknown key (did you mean 'top_p'?)" in r.stderr
    assert "block_size: 16 is not allowed on the CPU backend" in r.stderr


def test_generate_reports_malformed_input_lines_before_starting_an_engine(tmp_path, tiny_model):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"prompt": 3}\nnot json\n{"text": "x"}\n')
    cfg = write_yaml(tmp_path / "c.yaml", engine_config(tiny_model))
    r = run("generate", cfg, "--input", prompts, "--output", tmp_path / "out.jsonl")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for line in (2, 3, 4):
        assert f"p.jsonl:{line}:" in r.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_generate_missing_model_is_a_clear_error(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    cfg = write_yaml(tmp_path / "c.yaml", engine_config(str(tmp_path / "no-model")))
    r = run("generate", cfg, "--input", prompts, "--output", tmp_path / "out.jsonl")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "is not a model vroll can load; as a local folder: no such folder" in r.stderr


def test_generate_writes_results_and_a_summary(tmp_path, tiny_model):
    data = engine_config(tiny_model)
    data["actor_infer"]["generating_args"].update(temperature=1.0, num_return_sequences=2, logprobs=True)
    cfg = write_yaml(tmp_path / "c.yaml", data)
    out = tmp_path / "out" / "results.jsonl"
    r = run("generate", cfg, "actor_infer.generating_args.max_new_tokens=5",
            "--input", f"{REPO}/examples/prompts.jsonl", "--output", out)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    n_prompts = len(open(f"{REPO}/examples/prompts.jsonl").read().splitlines())
    assert [row["index"] for row in rows] == list(range(n_prompts))
    for row in rows:
        assert len(row["samples"]) == 2
        for s in row["samples"]:
            assert set(s) >= {"text", "token_ids", "logprobs", "finish_reason"}
            assert 1 <= len(s["token_ids"]) <= 5 and len(s["logprobs"]) == len(s["token_ids"])
    assert f"prompts: {n_prompts}  samples: {2 * n_prompts}" in r.stdout
    assert "tokens/s:" in r.stdout


ON_THIS_MACHINE = ["actor_infer.strategy_args.strategy_config.block_size=32", "actor_infer.device_mapping=[0]",
                   "actor_train.device_mapping=[0,1]", "reference.device_mapping=[0,1]",
                   "rewards.reward_model.device_mapping=[1]"]


def test_unknown_role_and_unimplemented_strategy(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    r = run("generate", "examples/rlvr_megatron.yaml", *ON_THIS_MACHINE,
            "--role", "reference", "--input", prompts, "--output", tmp_path / "o.jsonl")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "strategy 'megatron_infer' is not available in vroll" in r.stderr
    r = run("generate", "examples/rlvr_megatron.yaml", *ON_THIS_MACHINE,
            "--role", "critic", "--input", prompts, "--output", tmp_path / "o.jsonl")
    assert r.returncode == 2 and "critic: no such role" in r.stderr


def test_tiny_model_is_reused(tmp_path):
    r1 = run("tiny-model", "--out", tmp_path / "m")
    assert r1.returncode == 0, r1.stderr
    stamp = os.path.getmtime(tmp_path / "m" / "model.safetensors")
    r2 = run("tiny-model", "--out", tmp_path / "m")
    assert r2.returncode == 0 and "already built" in r2.stderr
    assert os.path.getmtime(tmp_path / "m" / "model.safetensors") == stamp


def test_ctrl_c_stops_cleanly_and_leaves_no_process(tmp_path, tiny_model):
    import signal
    import time

    import psutil

    data = engine_config(tiny_model)
    data["actor_infer"]["generating_args"].update(max_new_tokens=200, ignore_eos=True, num_return_sequences=8,
                                                  temperature=1.0)
    cfg = write_yaml(tmp_path / "c.yaml", data)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "What is 1+1?"}\n' * 64)
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.Popen(VROLL + ["generate", cfg, "--input", str(prompts), "--output", str(tmp_path / "o.jsonl")],
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, preexec_fn=interruptible)
    for line in proc.stderr:  # wait until the engine runs
        if "engine ready" in line:
            break
    time.sleep(1.0)
    children = psutil.Process(proc.pid).children(recursive=True)
    engine_pid = int(line.rsplit("pid ", 1)[1].rstrip(")\n"))  # the ready line names the engine's process
    assert engine_pid in {proc.pid} | {c.pid for c in children}, line
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert "Traceback" not in proc.stderr.read()
    assert not (tmp_path / "o.jsonl").exists()
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_generate_with_two_engines_on_a_local_ray(tmp_path, tiny_model):
    data = engine_config(tiny_model)
    data["actor_infer"]["device_mapping"] = "list(range(0,2))"
    out = tmp_path / "o.jsonl"
    r = run("generate", write_yaml(tmp_path / "c.yaml", data), "--input", f"{REPO}/examples/prompts.jsonl",
            "--output", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "started a local Ray" in r.stderr and "2 engine(s) ready" in r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["index"] for row in rows] == list(range(len(rows))) and len(rows) == 8


def test_nothing_of_a_local_ray_outlives_a_killed_driver(tmp_path, tiny_model):
    """`kill -9` of `vroll generate` while two engines on a local Ray generate: within 10 s no process
    of that Ray session is left (Ray's agents would otherwise wait 60 s for the dead GCS)."""
    import signal
    import time

    import psutil

    data = engine_config(tiny_model)
    data["actor_infer"]["device_mapping"] = "list(range(0,2))"
    data["actor_infer"]["generating_args"].update(max_new_tokens=200, ignore_eos=True, num_return_sequences=8,
                                                  temperature=1.0)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "What is 1+1?"}\n' * 64)
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.Popen(VROLL + ["generate", write_yaml(tmp_path / "c.yaml", data), "--input", str(prompts),
                                     "--output", str(tmp_path / "o.jsonl")],
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        for line in proc.stderr:
            if "engine(s) ready" in line:
                break
        time.sleep(1.0)  # generating
        session = psutil.Process(proc.pid).children(recursive=True)
        names = {p.name() for p in session}
        assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert_gone_within(session, 10)
    finally:
        proc.kill()
        proc.stderr.close()


def test_generate_joins_an_existing_ray_cluster(tmp_path, tiny_model):
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    with socket.socket() as probe:  # a port nothing listens on now (another suite on this machine may hold 6391)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                            "--include-dashboard=false", "--disable-usage-stats"], capture_output=True, text=True,
                           timeout=120)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        data = engine_config(tiny_model)
        data["actor_infer"]["device_mapping"] = [0, 1]
        data["ray_address"] = f"127.0.0.1:{port}"
        data["num_gpus_per_node"] = 2  # device slots per node of the cluster
        r = run("generate", write_yaml(tmp_path / "c.yaml", data), "--input", f"{REPO}/examples/prompts.jsonl",
                "--output", tmp_path / "o.jsonl")
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"joined the Ray cluster at 127.0.0.1:{port} (1 nodes)" in r.stderr
        assert "started a local Ray" not in r.stderr
        data["ray_address"] = "127.0.0.1:1"  # nothing listens there: a clear error, no traceback
        r = run("generate", write_yaml(tmp_path / "c.yaml", data), "--input", f"{REPO}/examples/prompts.jsonl",
                "--output", tmp_path / "o.jsonl")
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "ray_address: cannot join the Ray cluster at '127.0.0.1:1'" in r.stderr
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120)
