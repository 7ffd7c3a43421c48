"""Grow a model, widen it, add tokens, convert dtype: python model_surgery.py small.pth big.pth --n_layer 24 --n_embd 1024 --vocab_size 65600"""

from rwkv_infctx.scripts.model_surgery import main

if __name__ == "__main__":
    main()
