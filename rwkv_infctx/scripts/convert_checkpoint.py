"""Convert an RWKV-7 or RWKV-6 model between a BlinkDL .pth (x070, x060) and a Hugging Face folder
for flash-linear-attention's RWKV7ForCausalLM or RWKV6ForCausalLM (config.json + model.safetensors).

The direction follows the source: a .pth file is written as an HF folder, an HF folder as a .pth.
Every tensor carries over unchanged (.pth -> HF -> .pth is bit-exact); a learned att.time_state
does not (fla's models have none). fla's RWKV-6 normalises each head (ln_x) with eps 1e-5 where
BlinkDL's x060 uses 64e-5, so the two give slightly different logits on the same weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import DTYPES
from ..errors import CheckpointError, one_line_errors
from ..interchange.hf import FLA_RWKV6_EPS_NOTE, hf_to_pth, pth_to_hf


def convert(source: str, out: str, dtype: str | None = None, overwrite: bool = False) -> Path:
    path = Path(source)
    if path.is_dir():
        return hf_to_pth(source, out, dtype=dtype, overwrite=overwrite)
    if path.is_file():
        if overwrite:
            raise CheckpointError("--overwrite applies to a .pth output only; an HF folder is never replaced")
        return pth_to_hf(source, out, dtype=dtype)
    raise CheckpointError(f"no such file or folder {source!r}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="convert_checkpoint.py", description=__doc__)
    p.add_argument("source", help="a BlinkDL x070/x060 .pth, or an fla RWKV-7/RWKV-6 Hugging Face folder")
    p.add_argument("out", help="the HF folder to create (from a .pth), or the .pth to write (from a folder)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="convert every tensor (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output .pth")
    args = p.parse_args(argv)
    with one_line_errors():
        path = convert(args.source, args.out, args.dtype, args.overwrite)
    print(f"wrote {path}")
    folder = Path(args.source) if Path(args.source).is_dir() else path
    if '"rwkv6"' in (folder / "config.json").read_text():
        print(f"note: {FLA_RWKV6_EPS_NOTE}")
