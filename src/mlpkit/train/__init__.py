"""The training layer: the task, the network, the steps (autograd and direct), the loop, learning-
rate schedules, threads and stop signals.
"""
