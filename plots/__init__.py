"""Figure code: accuracy-vs-parameters and fit-error plots (``python -m plots ...``)."""
