"""Convert an RWKV-7 model between a BlinkDL .pth and a Hugging Face folder for
flash-linear-attention's RWKV7ForCausalLM (config.json + model.safetensors).

The direction follows the source: a .pth file is written as an HF folder, an HF folder as a .pth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import DTYPES
from ..errors import CheckpointError, one_line_errors
from ..interchange.hf import hf_to_pth, pth_to_hf


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
    p.add_argument("source", help="a BlinkDL x070 .pth, or an fla RWKV-7 Hugging Face folder")
    p.add_argument("out", help="the HF folder to create (from a .pth), or the .pth to write (from a folder)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="convert every tensor (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output .pth")
    args = p.parse_args(argv)
    with one_line_errors():
        path = convert(args.source, args.out, args.dtype, args.overwrite)
    print(f"wrote {path}")
