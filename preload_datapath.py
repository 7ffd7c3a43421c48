"""Tokenise and cache a config's data once: python preload_datapath.py config.yaml [--num_proc 4]"""

from rwkv_infctx.scripts.preload import main

if __name__ == "__main__":
    main()
