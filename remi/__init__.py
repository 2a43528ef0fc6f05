"""remi-match: candidate matching with REMI-trained multi-interest user models."""

__version__ = "0.1.0"
