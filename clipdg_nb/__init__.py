"""clipdg-nb: few-shot CLIP fine-tuning under WILDS distribution shift (FMoW, iWildCam).

The helper library under the numbered notebooks: data, models, train, swa, eval, results, sweep.
"""
__version__ = "0.1.0"
