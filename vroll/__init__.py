"""vroll: RL post-training of language models with vLLM rollouts, configured in one YAML file."""

__version__ = "0.1.0"
