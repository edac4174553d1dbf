"""The offline tiny model: a byte-level BPE tokenizer and a small Qwen2 causal LM, built from a seed.

Nothing is downloaded. The result is a standard Hugging Face folder that transformers and vLLM
load like any other model. Head dimension is 64 because vLLM's CPU attention kernel rejects 16.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from vroll.data.arithmetic import corpus_lines

log = logging.getLogger(__name__)

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Like real chat models, the folder ships non-greedy defaults in generation_config.json.
# vroll always sends every sampling value explicitly, so these must never leak into a rollout.
SHIPPED_GENERATION_DEFAULTS = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}


@dataclass(frozen=True)
class TinySpec:
    seed: int = 0
    vocab_size: int = 512
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4  # head_dim = 256 / 4 = 64
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    # Wider than the usual 0.02 so that a random model's logits are well separated: greedy
    # decoding then has no near-ties, and comparisons with transformers are exact. A model meant to
    # be trained (the demo's models/tiny-std) uses 0.02: at 0.1 the attention saturates and
    # two-digit addition barely moves in 800 warm-up steps, against 65 % held-out at 0.02.
    initializer_range: float = 0.1
    corpus_size: int = 20000


def build_tokenizer(spec: TinySpec):
    """Train a byte-level BPE tokenizer on arithmetic text; digits are split one by one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(spec.corpus_size, spec.seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, chat_template=CHAT_TEMPLATE,
        model_max_length=spec.max_position_embeddings,
    )


def build_model(spec: TinySpec, tokenizer):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        do_sample=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **SHIPPED_GENERATION_DEFAULTS,
    )
    return model


def build_tiny_model(out: str | Path, spec: TinySpec | None = None, force: bool = False) -> Path:
    """Build the tiny model at ``out``; reuse it when a build with the same spec is already there."""
    spec = spec or TinySpec()
    out = Path(out)
    marker = out / "vroll_tiny_spec.json"
    if not force and marker.exists() and json.loads(marker.read_text()) == asdict(spec):
        log.info("tiny model already built at %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec)
    model = build_model(spec, tokenizer)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    marker.write_text(json.dumps(asdict(spec), indent=2))  # written last: marks a complete build
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built tiny model at %s (%.2f M parameters, vocab %d)", out, n_params / 1e6, len(tokenizer))
    return out
