"""Who gets a personal pixel: the one rule, in Python.

The recorder's statement applies the same rule in SQL (`personal_tracking` of
sql/139_one_source_for_consent_policies.sql, called by sql/queries/pixel.sql);
tests/tracking/test_policy.py holds the two to each other over every combination of
TRACKING_MODE, consent and objection.
"""

from __future__ import annotations


def personal_tracking(mode: str, consent: bool, withdrawn: bool) -> bool:
    """Whether a subscriber's opens may be recorded as theirs, per TRACKING_MODE: with
    their consent (`consent`), unless they objected (`notice`), never (`off`)."""
    if mode == "consent":
        return consent
    if mode == "notice":
        return not withdrawn
    return False
