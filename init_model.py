"""Write a fresh RWKV model: python init_model.py --n_layer 4 --n_embd 256 --vocab_size world out.pth"""

from rwkv_infctx.scripts.init_model import main

if __name__ == "__main__":
    main()
