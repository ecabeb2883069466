"""Digests: what a participant missed in a chat comes back to them as a mail in the
mail's own thread, once the chat has been quiet for `[presence] digest_after_minutes`.

Participants are the mail's sender and the recipients who opened their link (a
recipient who never did is not in the chat and gets nothing). For each, the messages
after what they read on a page (`reads`) and after what an earlier digest covered,
not their own; none: no mail. One digest per participant per quiet spell: the claim
(`digests`, up to the room's newest message) is one conditional write, so that two
presence processes on one database never both send it, and it survives a restart. A
claim that could not be sent is retried after RETRY_SECONDS.

Sent through the site's own MTA (`[presence] submit`: SMTP, or the sendmail command)
with the null envelope sender: a bounce of a digest goes nowhere, and nothing here
reads mail, so nothing can answer one.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import subprocess
from pathlib import Path

from mailtalk import metrics
from mailtalk.config import HostPort
from presence_api.digest_mail import Digest, compose
from presence_api.service import Service

log = logging.getLogger("mailtalk.presence.digest")

HORIZON_SECONDS = 7 * 86400    # a chat quiet for longer than this is not looked at again
RETRY_SECONDS = 600            # a claimed digest that did not go out is tried again
HISTORY = 500                  # messages looked at per chat (the page shows as many)
SUBMIT_TIMEOUT = 30.0


class SubmitError(Exception):
    """The MTA did not take the digest; str() says what it answered. `permanent`: a
    5xx (or sendmail's "data error"/"no such user"): trying again would not help."""

    def __init__(self, text: str, permanent: bool = False) -> None:
        super().__init__(text)
        self.permanent = permanent


_SENDMAIL_PERMANENT = (65, 67, 68)      # EX_DATAERR, EX_NOUSER, EX_NOHOST


def submit(target: HostPort | Path, rcpt: str, data: bytes) -> None:
    """Hand one mail to the site's MTA with the null envelope sender (blocking)."""
    if isinstance(target, Path):
        try:
            r = subprocess.run([str(target), "-i", "-f", "<>", "--", rcpt], input=data,
                               capture_output=True, timeout=SUBMIT_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SubmitError(f"{target}: {e}") from None
        if r.returncode != 0:
            raise SubmitError(f"{target} exited with {r.returncode}: "
                              f"{r.stderr.decode(errors='replace').strip()[:200]}",
                              r.returncode in _SENDMAIL_PERMANENT)
        return
    try:
        with smtplib.SMTP(target.host, target.port, timeout=SUBMIT_TIMEOUT) as smtp:
            smtp.sendmail("", [rcpt], data)
    except smtplib.SMTPRecipientsRefused as e:
        ((code, text),) = e.recipients.values()
        raise SubmitError(f"{target}: {code} {text.decode(errors='replace')}",
                          code >= 500) from None
    except smtplib.SMTPResponseException as e:
        raise SubmitError(f"{target}: {e.smtp_code} {e.smtp_error.decode(errors='replace')}",
                          e.smtp_code >= 500) from None
    except (smtplib.SMTPException, OSError) as e:
        raise SubmitError(f"{target}: {e}") from None


async def run_once(svc: Service, now: float) -> int:
    """Send every digest that is due; how many went."""
    p = svc.cfg.presence
    quiet_before = now - p.digest_after_minutes * 60
    sent = 0
    for mail_id, newest in await svc.store.quiet_rooms(quiet_before,
                                                       quiet_before - HORIZON_SECONDS):
        try:
            sent += await _room(svc, mail_id, newest, now)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("digests for mail %s failed", mail_id)
    return sent


async def _room(svc: Service, mail_id: str, newest: int, now: float) -> int:
    mail = await svc.store.get_mail(mail_id)
    if mail is None:
        return 0
    people = [mail.account.lower()] + [m.lower() for m in await svc.store.members(mail_id)
                                       if m.lower() != mail.account.lower()]
    reads, done = await svc.store.digest_marks(mail_id)
    waiting = [a for a in people if max(reads.get(a, 0), done.get(a, 0)) < newest]
    if not waiting:
        return 0
    off = await svc.store.digests_off(waiting)
    messages = await svc.store.messages(mail_id, HISTORY)
    sent = 0
    for address in waiting:
        seen = max(reads.get(address, 0), done.get(address, 0))
        missed = [m for m in messages if m.id > seen and m.author.lower() != address]
        if address in off or not missed:
            continue
        if not await svc.store.claim_digest(mail_id, address, newest, now,
                                            now - RETRY_SECONDS):
            continue                         # another process has it, or sent it
        for_sender = address == mail.account.lower()
        link = (f"{svc.cfg.presence.public_url}/m/{mail_id}" if for_sender
                else svc.links.url(mail_id, mail.account, address))
        if link is None:
            continue
        msg = compose(Digest(address, mail, missed, link, for_sender),
                      svc.cfg.presence.digest_from, svc.site_key, now)
        try:
            await asyncio.to_thread(submit, svc.cfg.presence.submit, address, bytes(msg))
        except SubmitError as e:
            metrics.DIGESTS.labels("refused" if e.permanent else "deferred").inc()
            if e.permanent:               # as good as sent: never tried again
                await svc.store.digest_sent(mail_id, address, newest)
                log.error("%s: digest to %s of %d messages refused for good (check that "
                          "[presence] submit relays for this service): %s",
                          mail.queue_id or mail_id, address, len(missed), e)
            else:
                log.warning("%s: digest to %s of %d messages not sent (tried again in %d s):"
                            " %s", mail.queue_id or mail_id, address, len(missed),
                            RETRY_SECONDS, e)
            continue
        await svc.store.digest_sent(mail_id, address, newest)
        metrics.DIGESTS.labels("sent").inc()
        log.info("%s: digest to %s: %d messages (%s)", mail.queue_id or mail_id, address,
                 len(missed), msg["Message-ID"])
        sent += 1
    return sent


def tick_seconds(digest_after_minutes: float) -> float:
    """How often to look: a few times per quiet period, at least every 30 s."""
    return max(0.5, min(30.0, digest_after_minutes * 60 / 4))


async def run(svc: Service) -> None:
    """The digest loop of one presence process (when `[presence] digest` is on)."""
    every = tick_seconds(svc.cfg.presence.digest_after_minutes)
    while True:
        try:
            await run_once(svc, svc.clock())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("looking for due digests failed")
        await asyncio.sleep(every)
