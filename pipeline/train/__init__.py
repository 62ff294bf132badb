"""The training stage: streaming shard reader (``pipeline.train.data``), models, loss and loop.

Imports torch only where a submodule needs it; never spaCy, Dask or ``pipeline.core``, so the stage
runs inside any CUDA PyTorch image.
"""
