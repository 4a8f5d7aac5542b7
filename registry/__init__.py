"""Registry stage: publish, version, download and load trained models (safetensors + model cards)."""
