"""Exit codes shared by every command, so cron and scripts can act on them."""

OK = 0
"""The command did what was asked (for next-day: every chain is done)."""
ERROR = 1
"""An unexpected error; rerun with --debug for the traceback."""
USAGE = 2
"""Invalid command-line arguments."""
NO_VALID_CHECKPOINT = 3
"""scan and publish: no valid checkpoint was found."""
NEEDS_ATTENTION = 4
"""A chain failed or is blocked, or the configuration is invalid: a person must act."""
CREDENTIALS = 5
"""No Kaggle credentials were found."""
KAGGLE_UNAVAILABLE = 6
"""Kaggle (or the emulator) did not answer after retries; the next run tries again."""
IN_PROGRESS = 10
"""next-day: work goes on (a session is running or a dataset is processing); run again later."""

HELP = """exit codes:
  0   success (next-day: every chain is done)
  1   unexpected error (rerun with --debug)
  2   invalid arguments
  3   no valid checkpoint found
  4   needs attention: a chain failed or is blocked, or relay.toml is invalid
  5   Kaggle credentials missing
  6   Kaggle API unavailable after retries; try again later
  10  in progress: a session is running or a dataset is processing; run again later"""
