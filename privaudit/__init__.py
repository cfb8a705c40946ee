"""privaudit: audit diffusion models for training-data privacy risk, and mitigate it."""

import os

# OpenMP threads that spin while waiting make torch many times slower on a busy machine
# (measured: 21x for one training step beside other jobs). Set before torch is first imported;
# a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
