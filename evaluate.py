"""LAMBADA accuracy and perplexity of a .pth: python evaluate.py model.pth --lambada lambada_test.jsonl"""

from rwkv_infctx.scripts.evaluate import main

if __name__ == "__main__":
    main()
