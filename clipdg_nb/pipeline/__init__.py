"""The machinery that runs the notebooks, off their import path: experiment files, their validation,
the papermill runner and its points, data preparation, Slurm scripts and the HTML reports."""
