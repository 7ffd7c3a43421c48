"""BlinkDL x070/x060 .pth <-> Hugging Face (fla RWKV7/RWKV6ForCausalLM) folder: python convert_checkpoint.py model.pth hf_folder"""

from rwkv_infctx.scripts.convert_checkpoint import main

if __name__ == "__main__":
    main()
