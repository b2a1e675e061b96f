"""Launchers: queue background jobs (training, TTA) in run folders and read their state back."""
