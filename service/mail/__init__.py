"""Building and sending one email: safe headers, wire bytes, SMTP, DKIM. Knows no capability."""
