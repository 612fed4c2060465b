"""Standard Webhooks signatures (https://www.standardwebhooks.com, "Signature scheme").

HMAC-SHA256 under the key (the base64 after `whsec_`, decoded by service/settings.py) of
`{webhook-id}.{webhook-timestamp}.{body}`, sent base64-encoded as `v1,<signature>`. The
timestamp is the attempt's, so a retry is signed afresh under the same id; receivers
refuse a timestamp more than a few minutes off their clock (replay protection).
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of one delivery attempt."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, webhook_id, timestamp, body),
    }
