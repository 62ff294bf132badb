"""clip2clinic: label engineering for medical vision-language training data."""

__version__ = "0.1.0"
