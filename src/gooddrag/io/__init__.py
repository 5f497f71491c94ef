"""Inputs and outputs: drag samples on disk, result folders and settings from the command line
(atomic writes: :mod:`gooddrag.core.atomic`)."""
