"""export_checkpoint.py on real DeepSpeed ZeRO-2 and ZeRO-3 checkpoint folders.

DeepSpeed runs here on the CPU (gloo, one process) just far enough to train one step and save a
checkpoint in its own sharded layout; the export must rebuild exactly the trained weights.
"""

import subprocess
import sys

import pytest
import torch

from rwkv_infctx.checkpoint import IGNORED_KEYS
from rwkv_infctx.scripts.export_checkpoint import export

from .helpers import ROOT

pytest.importorskip("deepspeed")

CHILD = """
import os, sys, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed
from rwkv_infctx.config import ModelConfig
from rwkv_infctx.model import RWKV
dist.init_process_group("gloo", rank=0, world_size=1)
stage, folder = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
class Wrapper(torch.nn.Module):  # holds the model under `model.`, as our LightningModule does
    def __init__(self):
        super().__init__()
        self.model = RWKV(ModelConfig(n_layer=2, n_embd=32, head_size=16, vocab_size=50))
        self.model.init_weights()
wrapper = Wrapper()
engine, *_ = deepspeed.initialize(model=wrapper, optimizer=torch.optim.Adam(wrapper.parameters(), lr=1e-2),
    config={"train_batch_size": 1, "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True})
ids = torch.randint(0, 50, (1, 16))
engine.backward(engine.module.model(ids)[0].float().logsumexp(-1).mean())
engine.step()
engine.save_checkpoint(folder)
with deepspeed.zero.GatheredParameters(list(wrapper.model.parameters()), enabled=stage == 3):
    torch.save({k: v.detach().clone() for k, v in wrapper.model.state_dict().items()}, folder + "/expected.pt")
"""


@pytest.mark.parametrize("stage", [2, 3], ids=["zero2", "zero3"])
def test_export_deepspeed_folder(stage, tmp_path):
    folder = tmp_path / f"ds{stage}"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(stage), str(folder), str(29400 + stage)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = torch.load(folder / "expected.pt", weights_only=True)
    sd = torch.load(export(str(folder), str(tmp_path / "out.pth")), weights_only=True)
    assert sd.keys() - expected.keys() == set(IGNORED_KEYS)  # BlinkDL's unused layer-0 v0/v1/v2
    for key in expected:
        torch.testing.assert_close(sd[key], expected[key].float(), rtol=0, atol=0, msg=key)
    assert not torch.equal(sd["blocks.1.att.key.weight"], torch.zeros_like(sd["blocks.1.att.key.weight"]))
