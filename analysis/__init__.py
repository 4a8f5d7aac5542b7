"""Analysis stage: classical 4D-STEM analysis that can call registry models for inference."""
