"""Bounces and complaints: which email bounced (VERP), what the report says, what to do.

- `verp`: the return path `{BOUNCE_LOCAL}+{token}@{BOUNCE_DOMAIN}` naming one email;
- `parse`: a bounce, complaint or auto-reply message into a `Report`;
- `actions`: erasure and the anonymous counts (`bounce_counts`);
- intakes: `receiver` (the `newsletter bounces` SMTP server), `imap` (a mailbox polled by
  the worker), `webhooks` (`POST /webhooks/{provider}`, checked by `signatures`);
- `send_hooks`: what the outbox calls (return path, a 5xx refusal of the recipient).
"""
