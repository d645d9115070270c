"""Critic-filtered self-training: the generator learns from the answers its own critic keeps (`phase=improve`).

This package sits above every other layer: it drives training (the generator's fine-tuning, the critic's refresh
through `training.run.train`), the offline world (problems, checkers, replay documents) and evaluation (the
rerank metrics). Training and evaluation still meet only through the export on disk: each round writes one and
its measurement reads it back. Nothing imports this package but the entry point.
"""
