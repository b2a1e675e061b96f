"""Test-only model families (registered through RADIAL_STUDIO_FAMILIES, never in engine/)."""
