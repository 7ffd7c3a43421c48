"""Moving models between this trainer and other formats (Hugging Face / flash-linear-attention)."""
