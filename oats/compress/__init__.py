"""Compressing a whole model block by block: statistics, allocation, the pipeline."""
