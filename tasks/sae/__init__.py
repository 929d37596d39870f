"""The SAE stage: token-level sparse autoencoders per (checkpoint, layer) from the store.

Modules: ``model`` (TopK and ReLU+L1 SAEs), ``loader`` (seeded streaming batches from the
activation store), ``train`` (the trainer with resume), ``fit`` (train SAEs of one
checkpoint from the store), ``files`` (SAELens file layout), ``evaluate`` (metrics, accuracy
and loss recovered), ``run`` (the run-level API and Prefect tasks; imports Prefect).
"""
