"""Whether saved tensors fit a model, read without loading either: the tensors a model folder's
config.json makes (names, shapes, floating point or not), built by transformers on the meta device
(no weights read, no memory), against the tensors safetensors files hold (their headers only). A
checkpoint of another model is then named before anything loads it. Under LoRA the weights are
the base model's (merged) and the optimiser state is the adapters': those are the meta model wrapped
with peft's adapters as the trainer wraps it (`models/lora.with_adapters`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vroll.models.lora import with_adapters
from vroll.models.values import value_config

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ModelTensors:
    """The tensors of a model as its config makes them."""

    source: str  # the config.json they come from (for messages)
    tensors: dict[str, tuple[Shape, bool]]  # state_dict name -> (shape, floating point)
    aliases: frozenset[str]  # names that share another's tensor (a tied lm_head): a checkpoint may omit them
    # the parameters the optimiser holds, by the trainer's names, when not the model's own: under LoRA the
    # adapters' and additional_target's (peft's names, `base_model.model.<...>.lora_A.default.weight`)
    trained: dict[str, Shape] | None = None

    def weights_mismatch(self, found: dict[str, tuple[Shape, str, Path]]) -> tuple[Path | None, str] | None:
        """The first tensor of `found` (name -> shape, safetensors dtype, file) that does not fit, in
        the model's order, then the checkpoint's extra names: (the file, what is wrong), None when all fit."""
        for name, (shape, floating) in self.tensors.items():
            if name not in found:
                if name in self.aliases:
                    continue
                return None, f"tensor {name!r} is missing from the checkpoint (the model's is {fmt(shape)})"
            got, dtype, file = found[name]
            if got != shape:
                return file, f"tensor {name!r} is {fmt(got)} in the checkpoint, {fmt(shape)} in the model"
            if floating and not is_floating(dtype):
                return file, (f"tensor {name!r} is {dtype} in the checkpoint, floating point in the model "
                              "(a quantised or integer tensor cannot be trained)")
        extra = next((n for n in found if n not in self.tensors), None)
        if extra is not None:
            return found[extra][2], (f"tensor {extra!r} ({fmt(found[extra][0])}) is in the checkpoint, and the model "
                                     "has no tensor of that name")
        return None

    def optimizer_mismatch(self, states: dict[str, dict[str, Shape]]) -> str | None:
        """The first optimiser state (parameter name -> slot -> shape) that does not fit a parameter (under
        LoRA: a parameter the adapters train)."""
        params = self.trained if self.trained is not None else {n: s for n, (s, _) in self.tensors.items()}
        for name, slots in states.items():
            if name not in params:
                if self.trained is not None:
                    return (f"it holds optimiser state for {name!r}, and this run's LoRA adapters (lora_target, "
                            "additional_target) train no parameter of that name")
                return f"it holds optimiser state for {name!r}, and the model has no parameter of that name"
            want = params[name]
            for slot, shape in slots.items():
                if shape and shape != want:  # scalars (AdamW's step) fit any parameter
                    return f"optimiser state {slot!r} of {name!r} is {fmt(shape)}, the parameter is {fmt(want)}"
        return None


def model_tensors(folder: str | Path, value_model: bool = False, trust_remote_code: bool = False,
                  lora_args=None) -> ModelTensors:
    """The tensors transformers makes from the folder's config.json, as the trainer builds the model
    (a causal LM, or a critic's value model: the backbone with its value head); with `lora_args` (a
    role's model_args that turn LoRA on), also the parameters its adapters train (`trained`), from the
    meta model wrapped with peft as the trainer wraps it (a ConfigError when the names do not fit)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

    if value_model:
        config, auto = value_config(str(folder), trust_remote_code), AutoModelForTokenClassification
    else:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        auto = AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
    tensors = {n: (tuple(t.shape), t.is_floating_point()) for n, t in model.state_dict().items()}
    unique = {n for n, _ in model.named_parameters()}
    aliases = frozenset(n for n, _ in model.named_parameters(remove_duplicate=False) if n not in unique)
    trained = None
    if lora_args is not None:
        with torch.device("meta"):  # peft's adapters on the meta device too: no memory, no initialisation
            adapted = with_adapters(model, lora_args)
        trained = {n: tuple(p.shape) for n, p in adapted.named_parameters() if p.requires_grad}
    return ModelTensors(str(Path(folder) / "config.json"), tensors, aliases, trained)


def file_tensors(files: list[Path]) -> dict[str, tuple[Shape, str, Path]]:
    """name -> (shape, dtype as safetensors names it, file) of every tensor in these safetensors files,
    from their headers (the files are checked readable before)."""
    from safetensors import safe_open

    found = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                part = f.get_slice(name)
                found[name] = (tuple(part.get_shape()), part.get_dtype(), file)
    return found


def is_floating(dtype: str) -> bool:
    return dtype.startswith(("F", "BF"))  # F64, F32, F16, BF16, F8_*: not I*, U*, BOOL


def fmt(shape: Shape) -> str:
    return f"[{', '.join(map(str, shape))}]"
