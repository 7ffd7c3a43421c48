"""Generate from the dragon prompt: python dragon_test.py model.pth [--length 100] [--temperature 1.0]"""

from rwkv_infctx.scripts.dragon_test import main

if __name__ == "__main__":
    main()
