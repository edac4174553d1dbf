"""What every role served from Ray actors shares: its `ActorGroup`, the group's call deadline, closing."""

from __future__ import annotations

from vroll.cluster.actors import ActorGroup


class RayRole:
    group: ActorGroup

    @property
    def call_timeout_s(self) -> float:
        return self.group.call_timeout_s

    @call_timeout_s.setter
    def call_timeout_s(self, seconds: float) -> None:
        self.group.call_timeout_s = seconds

    def close(self) -> None:
        """Stop the role's actors (and the Ray its group started); safe to call twice."""
        self.group.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
