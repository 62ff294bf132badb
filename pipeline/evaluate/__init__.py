"""Evaluation stages: agreement of our labels with a dump's official labels."""
