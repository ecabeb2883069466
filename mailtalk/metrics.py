"""What each service counts, for Prometheus (prometheus-client's default registry:
one per process, so `mailtalk run` shows every part it runs on one /metrics).

Labels are few and fixed: an answer (yes/no/unknown/none), a reason class
(`reason_class`), a limit's name. Never an address, a domain or a free text: a
label per sender site would let any domain that mails us grow the scrape without end.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# presence service
LOOKUPS = Counter("mailtalk_presence_lookups", "Lookups answered, by answer (yes: online, "
                  "away or busy; no: offline; unknown: refused)", ["answer"])
LOOKUP_REFUSALS = Counter("mailtalk_presence_lookup_refusals",
                          "Lookups refused, by reason", ["reason"])
LOOKUP_SECONDS = Histogram("mailtalk_presence_lookup_seconds", "Time to answer a lookup",
                           buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1))
PAGES = Gauge("mailtalk_presence_pages", "Chat pages connected (logged-in and link pages)")
CHAT_MESSAGES = Counter("mailtalk_presence_chat_messages", "Chat messages posted")
RATE_LIMITED = Counter("mailtalk_presence_rate_limited",
                       "Requests refused by a rate limit, by limit", ["limit"])
BUS_EVENTS = Counter("mailtalk_presence_bus_events",
                    "Events heard from other presence processes (Redis), by kind", ["kind"])
DIGESTS = Counter("mailtalk_presence_digests", "Digest mails handed to the MTA, by result",
                  ["result"])

# receiving hook (content filter, LMTP hook, receiving milter)
FILTER_MAILS = Counter("mailtalk_filter_mails", "Mails the receiving hook decided on")
FILTER_ANSWERS = Counter("mailtalk_filter_answers",
                         "Recipients' X-Sender-Online by answer and reason class "
                         "(none: no usable claim, no header)", ["answer", "reason"])
FILTER_DEFERRALS = Counter("mailtalk_filter_deferrals",
                           "Recipients or mails deferred (4xx) by the hook, by reason",
                           ["reason"])
FILTER_LOOKUP_SECONDS = Histogram("mailtalk_filter_lookup_seconds",
                                  "Time of the lookup at the sender's site",
                                  buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2, 5))

# sending milter
MILTER_MAILS = Counter("mailtalk_milter_mails", "Mails the sending milter saw")
MILTER_CLAIMS = Counter("mailtalk_milter_claims",
                        "Mails given X-Messenger-Account and X-Mail-ID")
MILTER_FORGED = Counter("mailtalk_milter_forged_removed",
                        "Forged copies of our header fields removed")
OUTBOX_BACKLOG = Gauge("mailtalk_milter_outbox_backlog",
                       "Mail records in the outbox, not yet handed to the presence service")
OUTBOX_AGE = Gauge("mailtalk_milter_outbox_oldest_seconds",
                   "Age of the oldest record in the outbox (0: empty)")

_REASONS = (("timeout", "timeout"), ("breaker", "breaker"), ("busy", "capped"),
            ("cap", "capped"), ("no record", "no_record"), ("dns", "dns"),
            ("bad record", "dns"), ("dkim", "dkim"), ("http", "http"), ("connect", "http"),
            ("answer", "bad_answer"), ("json", "bad_answer"), ("origin", "bad_answer"),
            ("claim", "no_claim"), ("x-messenger-account", "no_claim"),
            ("x-mail-id", "no_claim"), ("no lookup", "not_configured"))


def reason_class(reason: str) -> str:
    """A free-text reason ("_mailtalk.x.example: timeout") as one of a few labels."""
    if not reason:
        return "none"
    low = reason.lower()
    return next((label for key, label in _REASONS if key in low), "other")


def answer_of(status: str) -> str:
    """A presence status as the header's answer."""
    return {"online": "yes", "away": "yes", "busy": "yes", "offline": "no"}.get(status,
                                                                                "unknown")
