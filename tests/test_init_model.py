"""init_model.py: BlinkDL's names and shapes, and it never overwrites."""

import subprocess
import sys

import torch

from rwkv_infctx.scripts.init_model import main

from .test_model_v7 import blinkdl_x070_table

from .helpers import ROOT



def test_init_model_writes_the_x070_table(tmp_path, capsys):
    out = tmp_path / "fresh.pth"
    main(["--n_layer", "2", "--n_embd", "128", "--vocab_size", "neox", "--head_size", "32", str(out)])
    sd = torch.load(out, weights_only=True)
    assert {k: tuple(v.shape) for k, v in sd.items()} == blinkdl_x070_table(128, 32, 2, 50277, 32, 32, 32, 64, 512)
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert torch.all(sd["blocks.1.att.output.weight"] == 0)
    assert "wrote" in capsys.readouterr().out


def test_skip_if_exists_never_overwrites(tmp_path):
    out = tmp_path / "keep.pth"
    out.write_bytes(b"precious")
    proc = subprocess.run([sys.executable, "init_model.py", "--n_layer", "1", "--n_embd", "64", "--skip-if-exists",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "left untouched" in proc.stdout
    proc = subprocess.run([sys.executable, "init_model.py", "--n_layer", "1", "--n_embd", "64", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"precious"


def test_bf16_dtype_and_seed_reproducible(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    for path in (a, b):
        main(["--n_layer", "1", "--n_embd", "64", "--vocab_size", "100", "--dtype", "bf16", "--seed", "7", str(path)])
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa["head.weight"].dtype == torch.bfloat16
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sa["head.weight"].float().abs().sum() > 0
