"""Export a checkpoint as a BlinkDL .pth: python export_checkpoint.py last.ckpt model.pth [--dtype bf16]"""

from rwkv_infctx.scripts.export_checkpoint import main

if __name__ == "__main__":
    main()
