"""Datasets: metadata + videos, clip probing, synthetic clips and the latent cache."""
