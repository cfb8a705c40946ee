"""privaudit: audit diffusion models for training-data privacy risk, and mitigate it."""

__version__ = "0.1.0"
