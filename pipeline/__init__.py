"""clip2clinic: label engineering for medical vision-language training data."""

import os

# Arrow tables that crossed a Dask transfer can hold buffers Acero calls misaligned; realigning
# them (a copy) is correct and silences a C++ warning on every group_by. Set before Arrow reads it.
os.environ.setdefault("ACERO_ALIGNMENT_HANDLING", "reallocate")

__version__ = "0.1.0"
