"""The config layer: YAML with line numbers, the typed schema, registries of names, loading with
--set overrides and cross-field rules, and locating every problem at file:line. No torch.
"""
