"""Scoring models: LAMBADA-style last-word accuracy and perplexity, and an lm-eval adapter."""
