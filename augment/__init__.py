"""Augmentation stage: detector and specimen artefacts applied to simulated CBED patterns."""
