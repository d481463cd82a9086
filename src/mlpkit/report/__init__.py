"""Reports on runs: layer summaries, terminal display, plots, comparisons, experiment trackers and
export.
"""
