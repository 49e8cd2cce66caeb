"""clipdg-nb: few-shot CLIP fine-tuning under WILDS distribution shift (FMoW, iWildCam).

The study's helper library under the numbered notebooks, read top to bottom:
datasets -> images -> models -> train / averaging -> evaluate -> runs, with `config` (what a run
is), `methods` (name -> how to run it) and `analysis` / `tables` / `plots` / `widgets` for the
notebooks. The machinery that runs notebooks lives in `clipdg_nb.pipeline`.
"""
__version__ = "0.1.0"
