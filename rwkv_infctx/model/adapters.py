"""Parameter-efficient finetuning: LoRA (through Hugging Face ``peft``), state tuning, freezing by
name patterns, and the files they export (merged .pth, adapter-only, state-only).

Names are BlinkDL's (``blocks.3.att.key.weight``): peft's wrapper names
(``blocks.3.att.key.base_layer.weight``, ``...lora_A.default.weight``) never reach the user.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError

# Every nn.Linear of a block that a version has (v7 has no att.gate and no ffn.receptance).
LORA_TARGETS = ("att.receptance", "att.key", "att.value", "att.output", "att.gate",
                "ffn.key", "ffn.value", "ffn.receptance")
ADAPTER = "default"  # peft's adapter name; one adapter per model
STATE = "initial_wkv"  # the model's starting WKV state (L, H, N, N) [key, value]
# Words of train_also / train_only / freeze that stand for groups of BlinkDL names.
SHORTHANDS = {
    "ln": ("blocks.*.ln[012].*", "blocks.*.att.ln_x.*", "ln_out.*"),
    "emb": ("emb.*",),
    "head": ("head.*",),
    "state": (STATE,),
}
LORA_META = "lora_config"  # the entry of an adapter file that records its LoRA settings


@dataclass
class LoraConfig:
    """LoRA adapters on the block's nn.Linear layers (Hugging Face peft); the base weights are frozen."""

    r: int = 16
    """Rank of each adapter; 0 turns LoRA off."""
    alpha: float = 32.0
    """Scale: a layer computes W x + alpha / r * B A x."""
    dropout: float = 0.0
    """Dropout on the adapters' input."""
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Layers to adapt, by BlinkDL's module names (att.receptance, att.key, att.value, att.output,
    att.gate, ffn.key, ffn.value, ffn.receptance; each matches that layer of every block, or name
    one layer: blocks.11.att.key). The default: every Linear of every block that the version has."""
    init: Literal["lora", "pissa"] = "lora"
    """lora: B = 0, an exact no-op at the start; pissa: A, B from the top-r singular vectors of W
    (W keeps the residual), which usually converges faster. PiSSA runs export merged only."""
    pissa_niter: int = 0
    """For init pissa: 0 = exact SVD; n > 0 = fast randomised SVD with n subspace iterations."""

    def __post_init__(self) -> None:
        if self.r < 0 or self.alpha <= 0 or not 0 <= self.dropout < 1 or self.pissa_niter < 0:
            raise ConfigError(f"model.lora: need r >= 0, alpha > 0, 0 <= dropout < 1, pissa_niter >= 0; got {self}")
        if self.init not in ("lora", "pissa"):
            raise ConfigError(f"model.lora.init={self.init!r}: choose lora or pissa")
        if not self.targets:
            raise ConfigError("model.lora.targets is empty: name at least one layer, e.g. att.key")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    @classmethod
    def coerce(cls, value: "LoraConfig | dict | None") -> "LoraConfig | None":
        """None when LoRA is off (null or r 0); a dict (from a checkpoint's hparams) becomes a config."""
        if isinstance(value, dict):
            value = cls(**value)
        return value if value is not None and value.r > 0 else None


# -- building -----------------------------------------------------------------------------------
def add_lora(model: nn.Module, cfg: LoraConfig, restoring: bool = False) -> nn.Module:
    """Wrap the target Linear layers in peft LoRA layers, in place (the model keeps its class).
    ``restoring``: a checkpoint is about to overwrite every weight, so skip the init (PiSSA's SVD)."""
    import peft

    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    defaults = list(cfg.targets) == list(LORA_TARGETS)
    targets = [t for t in cfg.targets if any(_names_layer(n, t) for n in linears)]
    unknown = sorted(set(cfg.targets) - set(targets))
    if unknown and not defaults:
        suffixes = sorted({n.split(".", 2)[-1] for n in linears if n.startswith("blocks.")})
        raise ConfigError(f"model.lora.targets {unknown} match no Linear layer of this model; choose from {suffixes}")
    init = "pissa" + (f"_niter_{cfg.pissa_niter}" if cfg.pissa_niter else "") if cfg.init == "pissa" else True
    init = False if restoring else init  # peft's plain random init: cheap
    peft_cfg = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                               target_modules=targets, init_lora_weights=init)
    return peft.inject_adapter_in_model(peft_cfg, model, adapter_name=ADAPTER)


def _names_layer(module_name: str, target: str) -> bool:
    return module_name == target or module_name.endswith("." + target)  # peft's own suffix rule


def has_lora(model: nn.Module) -> bool:
    return any(".lora_A." in n for n, _ in model.named_parameters())


def make_state_trainable(model: nn.Module) -> None:
    """The starting WKV state of every layer becomes a parameter (from the loaded one, or zeros)."""
    cfg = model.cfg
    initial = getattr(model, STATE)
    if isinstance(initial, nn.Parameter):
        return
    if initial is None:
        initial = torch.zeros(cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size, device=model.emb.weight.device)
    delattr(model, STATE)  # the buffer; empty_state() reads the attribute either way
    setattr(model, STATE, nn.Parameter(initial.detach().float().clone()))


# -- freezing -----------------------------------------------------------------------------------
def blinkdl_name(name: str) -> str:
    return name.replace(".base_layer", "")


def expand_patterns(words: list[str]) -> list[str]:
    return [p for w in words for p in SHORTHANDS.get(w, (w,))]


def matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(blinkdl_name(name), p) for p in patterns)


def select_trainable(model: nn.Module, train_only: list[str], train_also: list[str], freeze: list[str],
                     train_state: bool) -> None:
    """Set requires_grad on every parameter. With LoRA or state tuning or train_only, only the
    adapters, the state and what the patterns name train; freeze then removes what it names."""
    words = {"model.train_only": train_only, "model.train_also": train_also, "model.freeze": freeze}
    names = [n for n, _ in model.named_parameters()]
    for key, listed in words.items():
        for word in listed:
            if not any(matches(n, expand_patterns([word])) for n in names):
                raise ConfigError(f"{key}: {word!r} matches no parameter (fnmatch globs on BlinkDL names, "
                                  f"e.g. 'blocks.1[01].*', 'emb.*', or one of {sorted(SHORTHANDS)})")
    lora = has_lora(model)
    if train_also and not (lora or train_state or train_only):
        raise ConfigError("model.train_also adds to LoRA or state tuning; for partial finetuning of a "
                          "full model use model.train_only (or model.freeze)")
    partial = lora or train_state or bool(train_only)
    chosen = expand_patterns(train_only + train_also) + ([STATE] if train_state else [])
    frozen = expand_patterns(freeze)
    for name, p in model.named_parameters():
        wanted = not partial or ".lora_" in name or matches(name, chosen)
        p.requires_grad_(wanted and not matches(name, frozen))
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("nothing left to train: model.freeze freezes every parameter that would train")


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trained, frozen) element counts."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trained, sum(p.numel() for p in model.parameters()) - trained


def describe_training(model: nn.Module) -> str:
    trained, frozen = parameter_counts(model)
    share = 100 * trained / max(trained + frozen, 1)
    return f"parameters: {trained:,} trained ({share:.2f}%), {frozen:,} frozen"


# -- merging and files --------------------------------------------------------------------------
def merged_state_dict(sd: dict[str, Tensor], scaling: float | None) -> dict[str, Tensor]:
    """A state dict with peft LoRA names -> plain weights, W + scaling * B A folded in (fp32 math).

    Written by hand because peft merges only live layers: exporting a checkpoint file this way
    needs no model built around it (a 7B model would otherwise sit in memory twice)."""
    lora_a = {k[: -len(f".lora_A.{ADAPTER}.weight")]: v for k, v in sd.items() if k.endswith(f".lora_A.{ADAPTER}.weight")}
    if lora_a and scaling is None:
        raise CheckpointError("this checkpoint has LoRA adapters but no record of lora.alpha; pass it (--lora_alpha)")
    out = {}
    for key, value in sd.items():
        if ".lora_" in key:
            continue
        layer = key[: -len(".base_layer.weight")] if key.endswith(".base_layer.weight") else None
        if layer is None:
            out[key] = value
            continue
        B, A = sd[f"{layer}.lora_B.{ADAPTER}.weight"].float(), lora_a[layer].float()
        out[f"{layer}.weight"] = (value.float() + scaling * (B @ A)).to(value.dtype)
    return out


def export_state_dict(model: nn.Module, lora: LoraConfig | None) -> dict[str, Tensor]:
    """The model's weights with any LoRA merged: what a BlinkDL .pth holds (before to_blinkdl)."""
    return merged_state_dict(model.state_dict(), lora.scaling if lora else None)


def adapter_state_dict(model: nn.Module, lora: LoraConfig | None) -> dict:
    """Everything a finetune changed, by BlinkDL names: LoRA A/B (``X.lora_A.weight``, as peft's
    adapter files), the state and every other trained tensor, plus the LoRA settings."""
    from ..checkpoint import to_blinkdl

    check_exports(model, lora, adapter=True, state=False)
    out = {blinkdl_name(n).replace(f".{ADAPTER}.", "."): p.detach().cpu().clone()
           for n, p in model.named_parameters() if p.requires_grad}
    out = to_blinkdl(out)
    if lora is not None:
        out[LORA_META] = asdict(lora)
    return out


def state_only_dict(model: nn.Module) -> dict[str, Tensor]:
    """The learned starting state as BlinkDL's per-layer att.time_state (an RWKV-Runner state file)."""
    from ..checkpoint import to_blinkdl

    check_exports(model, None, adapter=False, state=True)
    return to_blinkdl({STATE: getattr(model, STATE).detach().cpu().float().clone()})


def adapter_dict_from_checkpoint(sd: dict[str, Tensor], hparams: dict, source: str) -> dict:
    """What ``adapter_state_dict`` writes at the end of fit, from a training checkpoint's state dict
    and hyperparameters (which record what trained): LoRA A/B, the state, the train_also tensors."""
    from ..checkpoint import to_blinkdl

    lora = LoraConfig.coerce(hparams.get("lora"))
    if lora is not None and lora.init == "pissa":
        raise CheckpointError(f"{source}: a PiSSA run changes the base weights too; export it merged")
    also = [w for w in hparams.get("train_also") or [] if w != "state"]
    train_state = hparams.get("train_state") or "state" in (hparams.get("train_also") or [])
    patterns = expand_patterns(also)
    out = {blinkdl_name(k).replace(f".{ADAPTER}.", "."): v.clone() for k, v in sd.items()
           if ".lora_A." in k or ".lora_B." in k or (patterns and matches(k, patterns))
           or (train_state and k == STATE)}
    if not out:
        raise CheckpointError(f"{source}: nothing was finetuned apart from the base (no LoRA, state or "
                              "train_also tensors): export it as a whole .pth")
    out = to_blinkdl(out)
    if lora is not None:
        out[LORA_META] = asdict(lora)
    return out


def state_dict_from_checkpoint(sd: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """A training checkpoint's learned starting state as BlinkDL's per-layer att.time_state."""
    from ..checkpoint import to_blinkdl

    if sd.get(STATE) is None:
        raise CheckpointError(f"{source}: holds no learned state (it was not trained with model.train_state)")
    return to_blinkdl({STATE: sd[STATE].float().clone()})


def read_adapter_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.load_adapter: no such file {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable adapter file ({type(exc).__name__}: {exc})") from None


def load_adapter(model: nn.Module, path: str | os.PathLike, lora: LoraConfig | None) -> LoraConfig | None:
    """Put an adapter file's tensors into the model, adding LoRA layers (with the file's settings
    unless ``lora`` is given) first. Returns the LoRA settings in force."""
    from ..checkpoint import from_blinkdl

    sd = dict(read_adapter_file(path))
    meta = sd.pop(LORA_META, None)
    if meta is not None and lora is None:
        lora = LoraConfig(**meta)
    if meta is not None and (lora.init == "pissa"):
        raise ConfigError("model.load_adapter: the adapter holds LoRA deltas; set model.lora.init lora")
    if meta is not None and not has_lora(model):
        add_lora(model, lora)
    sd = from_blinkdl(sd, model.cfg.n_layer, str(path))
    if STATE in sd and getattr(model, STATE) is None:
        model.initial_wkv = torch.zeros_like(sd[STATE])
    own = {blinkdl_name(n).replace(f".{ADAPTER}.", "."): t for n, t in model.state_dict(keep_vars=True).items()}
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise CheckpointError(f"{path}: {unexpected[0]!r} is not in this model ({len(unexpected)} unknown keys); "
                              "was the adapter trained on another base or with other lora.targets?")
    with torch.no_grad():
        for key, value in sd.items():
            if own[key].shape != value.shape:
                raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, the model's is {tuple(own[key].shape)}")
            own[key].copy_(value.to(own[key].dtype))
    return lora


# -- what the LightningModule calls -------------------------------------------------------------
def prepare_finetuning(model: nn.Module, lora: LoraConfig | None, train_state: bool, train_only: list[str],
                       train_also: list[str], freeze: list[str], adapter_path: str | None,
                       restoring: bool = False) -> LoraConfig | None:
    """Add LoRA and the state parameter as configured, load an adapter file, choose what trains.
    Returns the LoRA settings in force (an adapter file brings its own). ``restoring``: a training
    checkpoint is about to overwrite the weights, so LoRA layers skip their (PiSSA: costly) init."""
    if lora is not None and train_only:
        raise ConfigError("model.train_only and model.lora exclude each other: with LoRA the base is "
                          "frozen; name extra trained tensors in model.train_also")
    train_state = train_state or "state" in train_also or "state" in train_only
    if train_state:
        make_state_trainable(model)
    if adapter_path:
        lora = load_adapter(model, adapter_path, lora)
    elif lora is not None:
        add_lora(model, lora, restoring)
    select_trainable(model, train_only, [w for w in train_also if w != "state"], freeze, train_state)
    return lora


def check_exports(model: nn.Module, lora: LoraConfig | None, adapter: bool, state: bool) -> None:
    """Refuse at the start, not after training, an export that cannot be written."""
    if adapter and lora is not None and lora.init == "pissa":
        raise ConfigError("model.export_adapter: a PiSSA run changes the base weights too, so it exports "
                          "merged only (rwkv-final.pth); use model.lora.init lora for an adapter file")
    if state and getattr(model, STATE) is None:
        raise ConfigError("model.export_state: there is no state to export; set model.train_state true")


def save_exports(model: nn.Module, lora: LoraConfig | None, path: Path, adapter: bool, state: bool) -> list[Path]:
    """The merged .pth at ``path``; on request ``<stem>-adapter.pth`` and ``<stem>-state.pth`` beside it."""
    from ..checkpoint import save_pth
    from ..files import first_unused, save_torch_atomic

    written = [save_pth(export_state_dict(model, lora), path)]
    if adapter:
        written.append(save_torch_atomic(adapter_state_dict(model, lora), first_unused(path.with_name(f"{path.stem}-adapter.pth"))))
    if state:
        written.append(save_torch_atomic(state_only_dict(model), first_unused(path.with_name(f"{path.stem}-state.pth"))))
    return written
