"""Backbones and what runs on them: the kind read from a model's configs, conditioning, loading
(hub id, diffusers folder, single file), LoRA, feature hooks, attention processors, named models
and the tiny pipelines built from small configs (test fixtures, and the shipped model's text parts)."""
