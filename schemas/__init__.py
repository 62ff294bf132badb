"""Dataset schemas (YAML), shipped as package data; see README.md."""
