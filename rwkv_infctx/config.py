"""Typed model configuration: the only thing a model module takes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal, get_args

from .errors import ConfigError

Version = Literal["x052", "x060", "x070"]
SUPPORTED_VERSIONS: tuple[str, ...] = get_args(Version)  # the one list of versions


def _lora_dim(n_embd: int, factor: float, power: float = 0.5) -> int:
    # BlinkDL's suggestion: factor * C**power rounded to a multiple of 32, at least 32.
    return max(32, int(round(factor * (n_embd**power) / 32) * 32))


def _x070_defaults(n_embd: int) -> dict:
    C = n_embd
    return dict(dim_ffn=4 * C, decay_lora=_lora_dim(C, 2.5), iclr_lora=_lora_dim(C, 2.5),
                value_lora=_lora_dim(C, 1.7), gate_lora=_lora_dim(C, 5.0))


def _x060_defaults(n_embd: int) -> dict:
    # BlinkDL's RWKV-v5/src/model.py fixes these ranks; released large models use larger ones,
    # which are read from the tensor shapes when a .pth is loaded.
    return dict(dim_ffn=int(n_embd * 3.5) // 32 * 32, mix_lora=32, decay_lora=64)


def _x052_defaults(n_embd: int) -> dict:
    return dict(dim_ffn=int(n_embd * 3.5) // 32 * 32)


# What a field left at None becomes, per version; fields a version does not use stay None.
VERSION_DEFAULTS = {"x052": _x052_defaults, "x060": _x060_defaults, "x070": _x070_defaults}


@dataclass
class ModelConfig:
    """Architecture of one RWKV model. ``dim_ffn`` and LoRA ranks left at None follow BlinkDL's
    defaults for the version; when a .pth is loaded they are read from its tensor shapes instead.

    LoRA ranks by version: x070 uses decay_lora (w1/w2), iclr_lora (a1/a2), value_lora (v1/v2) and
    gate_lora (g1/g2); x060 uses mix_lora (time_maa_w1/w2, one rank per each of the 5 mixes) and
    decay_lora (time_decay_w1/w2); x052 has none.
    """

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
    mix_lora: int | None = None

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
        for name, default in VERSION_DEFAULTS[self.version](self.n_embd).items():
            if not getattr(self, name):
                setattr(self, name, default)

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


# The sizes that follow n_embd by the version's defaults (VERSION_DEFAULTS) unless set, and that a
# .pth may carry at other values: a model built from a .pth takes them from its shapes.
ARCHITECTURE_SIZES: tuple[str, ...] = tuple(f.name for f in fields(ModelConfig) if f.default is None)
