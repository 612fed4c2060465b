"""Open tracking: the pixel, its group-commit recorder, who fetched it (classification, country), the person's tracking choice."""
