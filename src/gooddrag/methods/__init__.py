"""Drag methods: their configs and presets, the method seam and the pipeline that runs them."""
