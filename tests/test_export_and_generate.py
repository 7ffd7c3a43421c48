"""export_checkpoint.py (Lightning .ckpt -> .pth) and dragon_test.py (recurrent generation)."""

import io

import lightning as L
import pytest
import torch

from rwkv_infctx.checkpoint import IGNORED_KEYS, save_pth
from rwkv_infctx.data.tokenizer import load_tokenizer
from rwkv_infctx.data.datamodule import RWKVDataModule
from rwkv_infctx.errors import CheckpointError
from rwkv_infctx.generate import SamplingConfig, generate_tokens
from rwkv_infctx.scripts import dragon_test
from rwkv_infctx.scripts.export_checkpoint import export
from rwkv_infctx.training.module import RWKVModule

from .helpers import random_model, tiny_config


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    module = RWKVModule(n_layer=1, n_embd=32, head_size=16, ctx_len=32, export_pth=False)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp, limit_val_batches=0)
    trainer.fit(module, RWKVDataModule(batch_size=2, sample_len=64, test_split=0))
    path = tmp / "trained.ckpt"
    trainer.save_checkpoint(path)
    return path, {k: v.clone() for k, v in module.model.state_dict().items()}


def test_export_lightning_ckpt_matches_the_model(lightning_ckpt, tmp_path):
    ckpt, expected = lightning_ckpt
    out = export(str(ckpt), str(tmp_path / "m.pth"))
    sd = torch.load(out, weights_only=True)
    assert sd.keys() - expected.keys() == set(IGNORED_KEYS)  # BlinkDL's unused layer-0 v0/v1/v2
    assert all(torch.equal(sd[k], expected[k]) for k in expected)
    bf16 = torch.load(export(str(ckpt), str(tmp_path / "b.pth"), dtype="bf16"), weights_only=True)
    assert bf16["head.weight"].dtype == torch.bfloat16


def test_export_never_overwrites_unless_asked(lightning_ckpt, tmp_path):
    ckpt, _ = lightning_ckpt
    out = tmp_path / "keep.pth"
    out.write_bytes(b"keep")
    with pytest.raises(CheckpointError, match="exists"):
        export(str(ckpt), str(out))
    assert out.read_bytes() == b"keep"
    export(str(ckpt), str(out), overwrite=True)
    assert "emb.weight" in torch.load(out, weights_only=True)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        export(str(tmp_path / "missing.ckpt"), str(tmp_path / "x.pth"))


def test_recurrent_decoding_matches_parallel_forward():
    """Greedy generation one token at a time must pick the argmax of one full forward's logits."""
    model = random_model(tiny_config(), scale=0.3).eval()
    prompt = [5, 17, 3, 88, 42]
    new = list(generate_tokens(model, prompt, 12, SamplingConfig(temperature=0)))
    assert len(new) == 12
    with torch.no_grad():
        logits, _ = model(torch.tensor([prompt + new]))
    predicted = logits[0, len(prompt) - 1 : -1].argmax(-1).tolist()
    assert predicted == new


def test_dragon_test_streams_text_of_the_asked_length(tmp_path):
    cfg = tiny_config(vocab_size=65536, n_embd=32)
    path = save_pth(random_model(cfg, scale=0.3), tmp_path / "d.pth")
    out = io.StringIO()
    result = dragon_test.run(str(path), "world", "In a shocking finding,", 20, SamplingConfig(seed=1), out=out)
    assert result["tokens"] == 20
    text = out.getvalue()
    assert text.startswith("In a shocking finding,") and "tokens/s" in text
    # the streamed pieces are the decoded tokens the sampler drew for this seed, nothing else
    model = dragon_test.load_model(str(path))
    tokenizer = load_tokenizer("world")
    expected = list(generate_tokens(model, tokenizer.encode("In a shocking finding,"), 20, SamplingConfig(seed=1)))
    assert result["text"] == tokenizer.decode(expected)
    assert text.startswith("In a shocking finding," + result["text"])
