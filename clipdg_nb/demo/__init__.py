"""The offline default: synthetic WILDS-format data, a tiny CLIP (and its vision-only twin)
pretrained on a synthetic caption corpus, and `run_demo`, the whole study end to end on a CPU."""
