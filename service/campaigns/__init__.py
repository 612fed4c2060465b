"""Campaigns: stored templates, queueing a send, each campaign email, statistics from the anonymous aggregates."""
