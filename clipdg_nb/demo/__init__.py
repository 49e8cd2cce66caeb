"""The offline default: synthetic WILDS-format data and a tiny CLIP (and its vision-only twin)
pretrained on a synthetic caption corpus. `pipeline.demo.run_demo` runs the whole study on them."""
