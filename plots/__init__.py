"""Figure and report-file code (``python -m plots ...``); imports ``bench``, never the reverse."""
