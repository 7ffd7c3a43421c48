"""ZeRO-3 with the chunk loop: two ranks (DeepSpeed on the CPU, gloo), each holding a shard of every
parameter, run chunked BPTT with per-chunk recomputation; the gradients equal plain autograd's.

Under ZeRO-3 every layer's parameters are gathered inside each chunk's forward and again in its
recompute, and its gradients are reduce-scattered across ranks: this checks that the carried
state, the non-reentrant checkpoint and those gathers give the one-process gradient.
"""

import socket
import subprocess
import sys

import pytest
import torch

from rwkv_infctx.config import ModelConfig
from rwkv_infctx.model import RWKV
from rwkv_infctx.training.bptt import chunked_sample_loss

from .helpers import ROOT

pytest.importorskip("deepspeed")
CONFIG = dict(n_layer=2, n_embd=32, head_size=16, vocab_size=50)
CTX_LEN, T = 16, 64

RANK = """
import os, sys, torch, torch.distributed as dist
rank, port, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
import deepspeed
from rwkv_infctx.config import ModelConfig
from rwkv_infctx.model import RWKV
from rwkv_infctx.training.bptt import chunked_sample_loss
dist.init_process_group("gloo", rank=rank, world_size=2)
initial = torch.load(folder + "/initial.pt", weights_only=True)
batch = torch.load(folder + "/batch.pt", weights_only=True)
class Wrapper(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = RWKV(ModelConfig(**{CONFIG!r}))
        self.model.load_state_dict(initial)
wrapper = Wrapper()
engine, *_ = deepspeed.initialize(model=wrapper, optimizer=torch.optim.SGD(wrapper.parameters(), lr=1e-3),
    config={{"train_micro_batch_size_per_gpu": 1, "gradient_clipping": 0.0, "zero_allow_untested_optimizer": True,
            "zero_optimization": {{"stage": 3, "stage3_param_persistence_threshold": 0}}}})
ids, targets, mask = (x[rank:rank + 1] for x in batch)
out = chunked_sample_loss(engine.module.model, ids, targets, mask, {CTX_LEN!r}, recompute=True)
engine.backward(out.loss)
grads = {{name: deepspeed.utils.safe_get_full_grad(p) for name, p in wrapper.model.named_parameters()}}  # collective
if rank == 0:
    torch.save({{name: g.detach().clone() for name, g in grads.items()}}, folder + "/grads.pt")
""".format(CONFIG=CONFIG, CTX_LEN=CTX_LEN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero3_two_ranks_chunked_recompute_gives_the_one_process_gradient(tmp_path):
    torch.manual_seed(0)
    model = RWKV(ModelConfig(**CONFIG))
    model.init_weights()
    with torch.no_grad():  # the official init zeroes output matrices, which would hide most gradients
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, CONFIG["vocab_size"], (2, T + 1), generator=g)
    batch = (ids[:, :-1], ids[:, 1:], torch.ones(2, T))
    torch.save(model.state_dict(), tmp_path / "initial.pt")
    torch.save(batch, tmp_path / "batch.pt")

    port = str(free_port())
    ranks = [subprocess.Popen([sys.executable, "-c", RANK, str(rank), port, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    for proc in ranks:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-3000:]

    # one process, whole samples, no recompute: ZeRO averages the two ranks' gradients
    losses = [chunked_sample_loss(model, *(x[i:i + 1] for x in batch), ctx_len=T, recompute=False).loss
              for i in (0, 1)]
    (sum(losses) / 2).backward()
    zero3 = torch.load(tmp_path / "grads.pt", weights_only=True)
    assert zero3.keys() == dict(model.named_parameters()).keys()
    for name, p in model.named_parameters():
        torch.testing.assert_close(zero3[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert sum(p.grad.norm() for p in model.parameters()) > 1.0  # the gradients compared are not ~0
