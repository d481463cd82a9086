"""The verbs' flows, one module per verb, each reading top to bottom: load the config, prepare the
data, build, fit, write. cli.py calls them and renders what they return.
"""
