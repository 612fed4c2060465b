"""One SMTP connection, kept open between messages, with outcomes sorted for the outbox.

`RelayUnavailable`: the relay could not be reached or refused our login; no message
was handed over and the job is not to blame, so it keeps its attempts.
`Transient`: a 4xx answer or a connection lost mid-message; retry later.
`Permanent`: a 5xx answer; retrying will not help.
"""

from __future__ import annotations

import logging
import time

import aiosmtplib

from service.settings import Settings

log = logging.getLogger("newsletter.smtp")

# A relay typically closes an idle session after a few minutes (Postfix: 300 s);
# past this the connection is checked with NOOP before it is used again.
CHECK_AFTER_IDLE_S = 10.0
# Closed politely when nothing was sent for this long.
CLOSE_AFTER_IDLE_S = 60.0


class SmtpFailure(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason  # short, never an address


class RelayUnavailable(SmtpFailure):
    pass


class Transient(SmtpFailure):
    pass


class Permanent(SmtpFailure):
    pass


def _classify(exc: aiosmtplib.SMTPException) -> SmtpFailure:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        code = codes[0] if codes else None
    elif isinstance(exc, aiosmtplib.SMTPResponseException):
        code = exc.code
    elif isinstance(exc, aiosmtplib.SMTPNotSupported):
        return Permanent(None, "extension not supported (SMTPUTF8)")
    else:
        return Transient(None, exc.__class__.__name__)
    if code is not None and 500 <= code < 600:
        return Permanent(code, f"{code} {exc.__class__.__name__}")
    return Transient(code, f"{code} {exc.__class__.__name__}")


class Mailer:
    """Sends raw messages over one connection, (re)connecting when needed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._smtp: aiosmtplib.SMTP | None = None
        self._last_used = 0.0

    async def _connect(self) -> aiosmtplib.SMTP:
        target = self.settings.smtp
        smtp = aiosmtplib.SMTP(
            hostname=target.hostname,
            port=target.port,
            username=target.username,
            password=target.password,
            use_tls=target.use_tls,
            start_tls=target.start_tls,
            validate_certs=target.validate_certs,
            timeout=self.settings.smtp_timeout,
        )
        try:
            await smtp.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise RelayUnavailable(exc.code, "authentication failed") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise RelayUnavailable(None, exc.__class__.__name__) from None
        return smtp

    async def _connection(self) -> aiosmtplib.SMTP:
        smtp = self._smtp
        if smtp is not None and smtp.is_connected:
            if time.monotonic() - self._last_used < CHECK_AFTER_IDLE_S:
                return smtp
            try:
                await smtp.noop()
                return smtp
            except (aiosmtplib.SMTPException, OSError):
                await self.close()
        self._smtp = await self._connect()
        return self._smtp

    async def send(
        self, sender: str, recipients: list[str], message: bytes, smtputf8: bool = False
    ) -> None:
        """Hands one message to the relay or raises an `SmtpFailure`."""
        smtp = await self._connection()
        try:
            await smtp.sendmail(
                sender, recipients, message, mail_options=["SMTPUTF8"] if smtputf8 else None
            )
        except aiosmtplib.SMTPException as exc:
            failure = _classify(exc)
            if not smtp.is_connected or isinstance(exc, aiosmtplib.SMTPServerDisconnected):
                await self.close()
            raise failure from None
        except (OSError, TimeoutError) as exc:
            await self.close()
            raise Transient(None, exc.__class__.__name__) from None
        except ValueError:  # an address aiosmtplib refuses to put on the wire
            raise Permanent(None, "unsendable address") from None
        finally:
            self._last_used = time.monotonic()

    async def close_if_idle(self) -> None:
        if self._smtp is not None and time.monotonic() - self._last_used > CLOSE_AFTER_IDLE_S:
            await self.close()

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                await smtp.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            smtp.close()
