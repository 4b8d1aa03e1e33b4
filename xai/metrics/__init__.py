"""xai.metrics (see the open issues)."""
