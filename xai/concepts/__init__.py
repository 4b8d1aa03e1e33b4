"""xai.concepts (see the open issues)."""
