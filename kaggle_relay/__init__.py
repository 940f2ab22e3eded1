"""kaggle-relay: carry a PyTorch training run across Kaggle sessions.

``kaggle_relay.runtime`` runs inside the kernel (standard library and torch),
``kaggle_relay.relay`` drives Kaggle from a laptop or cron host, and
``kaggle_relay.emulator`` serves the Kaggle API on loopback for tests and
rehearsals.
"""

__version__ = "0.1.0"
