"""The pipeline's YAML configuration: typed sections, loading, and validation."""

from vroll.config.errors import ConfigError, Issue
from vroll.config.loader import load_config
from vroll.config.schema import GeneratingArgs, ModelArgs, PipelineConfig, RoleConfig, StrategyArgs

__all__ = ["ConfigError", "Issue", "load_config", "GeneratingArgs", "ModelArgs", "PipelineConfig", "RoleConfig",
           "StrategyArgs"]
