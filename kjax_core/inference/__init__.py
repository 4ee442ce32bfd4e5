"""Inference on translated models: the fast path (:mod:`.predictor`), BatchNorm folding
(:mod:`.fold`) and data parallelism (:mod:`.sharding`)."""
