"""Grow a .pth (more layers appended, a wider residual, more vocabulary tokens), convert its dtype,
and drop keys no model uses (an HF-style extra, a stray training buffer). Prints what changed.

Exact: appended layers and added tokens leave the (old tokens') logits bit-identical, and a wider
n_embd (more heads of the same size, LoRA ranks kept) that is a multiple of the old one gives the
old logits up to rounding (each new residual channel copies an old one). Other widths are
approximate: each new channel holds the old channels' mean, which keeps every LayerNorm's
statistics, so x070 starts within ~1e-4 relative RMS of the small model's logits (LayerNorm eps,
ln0's per-token fit), x052/x060 within a few percent (their per-channel FFN gate cannot carry a
mean exactly)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import DTYPES, config_from_state_dict, load_pth, save_pth
from ..errors import one_line_errors
from ..interchange.surgery import describe_growth, grow_state_dict


def surgery(source: str, out: str, n_layer: int | None = None, vocab_size: int | None = None,
            dtype: str | None = None, seed: int = 0, overwrite: bool = False,
            n_embd: int | None = None) -> tuple[Path, list[str]]:
    """(the written .pth, lines saying what changed)."""
    sd = load_pth(source)
    original_dtype = next((name for name, d in DTYPES.items() if d == sd["emb.weight"].dtype), None)
    old_cfg = config_from_state_dict(sd)
    grown, stripped = grow_state_dict(sd, n_layer, vocab_size, seed, n_embd)
    report = describe_growth(old_cfg, config_from_state_dict(grown))
    if stripped:
        report.append(f"dropped {len(stripped)} key(s) no model uses: {', '.join(stripped)}")
    return save_pth(grown, out, dtype=dtype or original_dtype, overwrite=overwrite), report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="model_surgery.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a BlinkDL-format .pth")
    p.add_argument("out", help="the .pth to write")
    p.add_argument("--n_layer", type=int, default=None, help="total layers; new ones are appended, "
                   "with the official init, and leave the logits unchanged at first")
    p.add_argument("--n_embd", type=int, default=None, help="residual width (a multiple of the head size); "
                   "exact at a multiple of the old width, close otherwise (see above); "
                   "dim_ffn follows the version's default width ratio when the source has it")
    p.add_argument("--vocab_size", type=int, default=None, help="total tokens; new emb/head rows are the old rows' mean")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: the source's")
    p.add_argument("--seed", type=int, default=0, help="for the random parts of the new layers' init")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)
    with one_line_errors():
        path, report = surgery(args.source, args.out, args.n_layer, args.vocab_size, args.dtype, args.seed,
                                 args.overwrite, args.n_embd)
    print("\n".join([*report, f"wrote {path}"]))
