"""Clinical similarity and soft labels (Ko & Park, CVPR 2025, section 1 of ARCHITECTURE.md).

* ``encoding``: clinical vectors from labels and fine findings (the documented encoding);
* ``soft``: per-batch similarity matrices, soft targets and the soft CLIP loss (numpy, or torch
  tensors on any device; torch is imported only when a tensor is passed);
* ``topk``: exact corpus-scale top-k neighbours, block by block, ties broken by id;
* ``sampler``: a clinically aware, epoch-aware, shardable batch sampler over ``similarity_topk``;
* ``stage``: the ``clinical_vectors`` and ``similarity`` stages.
"""
