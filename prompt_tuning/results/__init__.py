"""`prompt-tuning results`: every run under a root in one table (collect.py) and the paper's figures (plots.py)."""
