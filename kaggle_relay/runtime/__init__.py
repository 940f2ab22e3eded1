"""The in-kernel checkpoint runtime: standard library and torch only.

Import what you need from here in a training script or notebook cell::

    from kaggle_relay.runtime import find_best_checkpoint, save_checkpoint, SessionClock
"""
