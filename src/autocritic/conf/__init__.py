"""The Hydra configs (train.yaml, evaluate.yaml and their groups), a package so that they ship with autocritic."""
