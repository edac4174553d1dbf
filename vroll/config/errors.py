"""Configuration errors: every problem found, each with its full key path."""

from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """A mistake in what the user gave (a file, a key, a path, a prompt, the installed vLLM): the CLI
    prints the message and exits 2, without a traceback."""


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded (missing, truncated, malformed or unsafe); names the file."""


@dataclass(frozen=True)
class Issue:
    path: str  # dotted key path, e.g. "actor_infer.generating_args.top_p"
    message: str  # names the bad value and what is allowed

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(UserError, ValueError):
    """Raised with all problems of a configuration at once."""

    def __init__(self, issues: list[Issue], source: str | None = None):
        self.issues = list(issues)
        self.source = source
        super().__init__(self.report())

    def report(self) -> str:
        head = f"invalid configuration{f' {self.source}' if self.source else ''}"
        head += f" ({len(self.issues)} problem{'s' if len(self.issues) != 1 else ''}):"
        return "\n".join([head] + [f"  - {i}" for i in self.issues])
