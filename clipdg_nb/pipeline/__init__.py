"""The machinery that runs the notebooks, off their import path: experiment files, the papermill
runner, Slurm scripts, HTML reports, the offline demo, tiny pretraining and synthetic WILDS data."""
