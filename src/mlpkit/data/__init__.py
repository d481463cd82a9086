"""The data layer: tables (CSV/Parquet) read and checked, block readers and streamed files,
synthetic sources, preprocessing fitted on training rows, and column inference for `mlpkit init`.
"""
