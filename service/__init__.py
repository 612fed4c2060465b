"""Newsletter double opt-in, one-click unsubscribe and open-tracking service."""

__version__ = "0.1.0"
