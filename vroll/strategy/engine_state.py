"""The inference engine's state in an RL loop, explicit so every call can check it.

Peers' users lost training runs to engines that generated from discarded weights after a
"successful" wake; here misuse is an error that names the state and the way out.
"""

from __future__ import annotations

from dataclasses import dataclass


class EngineStateError(RuntimeError):
    """An operation that the engine's current state does not allow."""


@dataclass
class EngineState:
    kv_cache: bool = True  # the KV cache is allocated
    weights: bool = True  # the weight memory is allocated
    weights_valid: bool = True  # the weights hold a complete, known version
    invalid_reason: str = ""
    asleep_level: int = 0  # 0 awake, 1 or 2 as last put to sleep

    @property
    def name(self) -> str:
        if not self.weights:
            return "asleep (level 2: KV cache and weights released)"
        if not self.kv_cache:
            return "asleep (level 1: KV cache released)" + ("" if self.weights_valid else ", weights invalid")
        if not self.weights_valid:
            return "weights invalid"
        return "serving"

    def invalidate(self, reason: str) -> None:
        self.weights_valid, self.invalid_reason = False, reason

    def require_serving(self, action: str, engine: str) -> None:
        if self.kv_cache and self.weights and self.weights_valid:
            return
        if not self.weights:
            fix = "call wake_up(), then update_weights() with the new weights"
        elif not self.kv_cache:
            fix = "call wake_up() first" + ("" if self.weights_valid else ", and update_weights()")
        else:
            fix = f"{self.invalid_reason}; a complete update_weights() makes it serve again"
        raise EngineStateError(f"{engine}: cannot {action}: the engine is {self.name}; {fix}")

    def require_weight_memory(self, engine: str) -> None:
        if not self.weights:
            raise EngineStateError(f"{engine}: cannot update weights: the engine is {self.name}; call "
                                   "wake_up(tags=['weights']) (or wake_up()) first")
