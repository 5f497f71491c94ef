"""The bottom layer, pure functions with no model in them: DDIM steps, motion supervision, point
tracking, the geometry of the frames, warps, the phase clock and atomic writes. Imports nothing of
gooddrag but :mod:`gooddrag.errors`."""
