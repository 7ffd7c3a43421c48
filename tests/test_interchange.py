"""Interchange with BlinkDL's trainer and Hugging Face (fla): every file we write, both directions."""

import lightning as L
import pytest
import torch
from torch import nn

from rwkv_infctx.checkpoint import IGNORED_KEYS, load_pth, load_state_into, save_pth
from rwkv_infctx.config import ModelConfig
from rwkv_infctx.data.datamodule import RWKVDataModule
from rwkv_infctx.model import RWKV
from rwkv_infctx.scripts.export_checkpoint import export
from rwkv_infctx.scripts.init_model import main as init_model_main
from rwkv_infctx.training.module import RWKVModule

from .helpers import random_model, tiny_config
from .test_model_v7 import blinkdl_x070_table


def module_from_key_table(table: dict) -> nn.Module:
    """An nn.Module whose state dict has exactly these keys and shapes: what BlinkDL's trainer
    builds and then loads a .pth into with strict=True."""
    root = nn.Module()
    for key, shape in table.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(torch.empty(shape)))
    return root


def load_like_blinkdl(path, C, L, V, N, F, Dv=32) -> None:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    module_from_key_table(blinkdl_x070_table(C, N, L, V, 32, 32, Dv, 64 if C >= 256 else 32, F)).load_state_dict(sd, strict=True)


def test_every_pth_we_write_loads_strictly_into_blinkdl_x070(tmp_path):
    """init_model.py, rwkv-final.pth and export_checkpoint.py (fp32 and bf16) write layer 0's v0/v1/v2."""
    init_model_main(["--n_layer", "2", "--n_embd", "64", "--vocab_size", "97", "--head_size", "16",
                     str(tmp_path / "init.pth")])
    load_like_blinkdl(tmp_path / "init.pth", 64, 2, 97, 16, 256)

    torch.manual_seed(0)
    module = RWKVModule(n_layer=1, n_embd=32, head_size=16, ctx_len=32)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0,
                        enable_checkpointing=False)
    trainer.fit(module, RWKVDataModule(batch_size=1, sample_len=32, test_split=0))
    final = tmp_path / "rwkv-final.pth"
    load_like_blinkdl(final, 32, 1, 65536, 16, 128)

    ckpt = tmp_path / "trained.ckpt"
    trainer.save_checkpoint(ckpt)
    for dtype in (None, "bf16"):
        load_like_blinkdl(export(str(ckpt), str(tmp_path / f"export-{dtype}.pth"), dtype=dtype), 32, 1, 65536, 16, 128)
    # our own loader takes the file back, and a file without the keys too
    model = RWKV(tiny_config(n_layer=1, n_embd=32, vocab_size=65536))
    load_state_into(model, load_pth(final))
    load_state_into(model, {k: v for k, v in load_pth(final).items() if k not in IGNORED_KEYS})


def test_layer0_value_residual_has_the_official_init_and_leaves_the_rng_alone(tmp_path):
    cfg = ModelConfig(n_layer=2, n_embd=128, vocab_size=97, head_size=32)
    model = random_model(cfg)
    torch.manual_seed(3)
    expected_draw = torch.rand(3)
    torch.manual_seed(3)
    sd = torch.load(save_pth(model, tmp_path / "m.pth"), weights_only=True)
    assert torch.equal(torch.rand(3), expected_draw)
    linear = torch.arange(128) / 127 - 0.5
    assert torch.allclose(sd["blocks.0.att.v0"].view(-1), 0.73 - 0.4 * linear, atol=1e-6)
    assert torch.all(sd["blocks.0.att.v1"] == 0)
    v2 = sd["blocks.0.att.v2"]  # (32, 128): orthogonal rows times 0.1, as BlinkDL's ortho_init
    assert torch.allclose(v2 @ v2.T, 0.01 * torch.eye(32), atol=1e-6)
    again = torch.load(save_pth(model, tmp_path / "again.pth"), weights_only=True)
    assert torch.equal(again["blocks.0.att.v2"], v2)
