"""Typed model configuration: the only thing a model module takes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from .errors import ConfigError

Version = Literal["x052", "x060", "x070"]
SUPPORTED_VERSIONS: tuple[str, ...] = ("x070",)


def _lora_dim(n_embd: int, factor: float, power: float = 0.5) -> int:
    # BlinkDL's suggestion: factor * C**power rounded to a multiple of 32, at least 32.
    return max(32, int(round(factor * (n_embd**power) / 32) * 32))


@dataclass
class ModelConfig:
    """Architecture of one RWKV model. LoRA ranks left at None follow BlinkDL's current formulas;
    when a .pth is loaded they are read from its tensor shapes instead."""

    version: Version = "x070"
    n_layer: int = 4
    n_embd: int = 256
    vocab_size: int = 65536
    head_size: int = 64
    dim_ffn: int | None = None
    decay_lora: int | None = None
    iclr_lora: int | None = None
    value_lora: int | None = None
    gate_lora: int | None = None

    def __post_init__(self) -> None:
        if self.version not in SUPPORTED_VERSIONS:
            raise ConfigError(
                f"model.version={self.version!r} is not implemented yet; supported: {', '.join(SUPPORTED_VERSIONS)}"
            )
        for name in ("n_layer", "n_embd", "vocab_size", "head_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.head_size:
            raise ConfigError(
                f"model.n_embd={self.n_embd} must be a multiple of model.head_size={self.head_size}"
            )
        if self.dim_ffn is None:
            self.dim_ffn = 4 * self.n_embd
        C = self.n_embd
        self.decay_lora = self.decay_lora or _lora_dim(C, 2.5)
        self.iclr_lora = self.iclr_lora or _lora_dim(C, 2.5)
        self.value_lora = self.value_lora or _lora_dim(C, 1.7)
        self.gate_lora = self.gate_lora or _lora_dim(C, 5.0)

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**values)

