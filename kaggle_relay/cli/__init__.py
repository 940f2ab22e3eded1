"""The ``kaggle-relay`` command line: one module per command group."""
