"""Data stage: Lightning data modules that stream simulated, augmented patterns into training."""
