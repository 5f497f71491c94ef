"""Synthetic "shapes" scenes and drag cases with exact ground truth, and the metrics
that score a drag result against them (pure numpy; see ``scenes`` and ``metrics``)."""
