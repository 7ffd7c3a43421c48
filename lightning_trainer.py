"""Train, validate or test an RWKV model: python lightning_trainer.py fit -c config-example.yaml"""

from rwkv_infctx.cli import main

if __name__ == "__main__":
    main()
