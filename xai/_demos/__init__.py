"""Demos that write figures; called by ``xai demo`` and the notebooks."""
