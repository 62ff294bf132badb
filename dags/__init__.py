"""DAG files (YAML), shipped as package data."""
