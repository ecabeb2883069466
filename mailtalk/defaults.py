"""Every default of the configuration, as a named constant in one place.

`deploy/mailtalk.toml.example` documents each key with its type and default;
keep the two in step.
"""

CONFIG_PATH = "/etc/mailtalk/mailtalk.toml"
CONFIG_ENV = "MAILTALK_CONFIG"

# [site]
STATE_DIR_ROOT = "/var/lib/mailtalk"          # when running as root
STATE_DIR_USER = "~/.local/state/mailtalk"    # otherwise ($XDG_STATE_HOME honoured)
SECRET_FILE_NAME = "site.key"                 # under state_dir
SIGNING_KEY_FILE_NAME = "lookup-signing.key"  # under state_dir
MAIL_ID_LIFETIME_DAYS = 30
LOG_LEVEL = "info"
# uvloop when it is installed (a pyproject dependency on Linux): the same asyncio API,
# its loop and transports in C. The filter spends a third of its time in the loop and
# in socket calls (docs/benchmarks.md).
EVENT_LOOP = "auto"

# [milter]
MILTER_SOCKET = "inet:8894@127.0.0.1"
MILTER_TIMEOUT = 30                           # seconds libmilter waits on the MTA
OUTBOX_FILE_NAME = "outbox.sqlite3"           # under state_dir
BODY_TEXT_LIMIT = 64 * 1024                   # bytes of body text recorded per mail
OUTBOX_RETRY_MAX = 60.0                       # seconds between hand-over tries, at most
MILTER_SOCKET_GROUP = "postfix"               # group of a unix: socket (mode 0660); "": 0666

# [filter]
FILTER_LISTEN = "127.0.0.1:10025"
FILTER_REINJECT = "127.0.0.1:10026"
LOOKUP_TIMEOUT = 2.0                          # seconds; the whole DNS + HTTP lookup
MAX_MESSAGE_SIZE = 50 * 1024 * 1024           # >= Postfix's message_size_limit (10240000)
LOOKUP_CONCURRENCY_PER_DOMAIN = 8
REINJECT_TIMEOUT = 60.0
# Idle re-injection connections kept between mails, and for how long. Each holds one
# of the re-injection smtpd's processes; the filter never holds more connections than
# mails in flight, which the `mailtalk` transport's maxproc bounds (10 in
# deploy/postfix/receiver-master.cf, as the smtpd's): keeping that many idle means a
# connection is made only when more mails are in flight than ever before.
REINJECT_IDLE_CONNECTIONS = 10
REINJECT_IDLE_SECONDS = 2.0                   # as Postfix's smtp_connection_cache_time_limit
FILTER_MODE = "smtp"                          # "smtp": content filter; "milter": Sendmail
FILTER_MILTER_SOCKET = "inet:8895@127.0.0.1"  # the receiving milter (mode = "milter")
FILTER_LMTP_LISTEN = "127.0.0.1:10024"        # the LMTP hook (mode = "lmtp")
FILTER_LMTP_NEXT = "unix:/run/dovecot/lmtp"   # Debian's Dovecot LMTP socket
FILTER_NOTICE = True                          # a visible notice with the chat link

# [presence]
PRESENCE_LISTEN = "127.0.0.1:8470"
PRESENCE_PUBLIC_URL = "http://127.0.0.1:8470"
DATABASE_FILE_NAME = "presence.sqlite3"       # under state_dir
LINK_LIFETIME_DAYS = 30
RETENTION_EXTRA_DAYS = 30                     # retention_days: link lifetime + this
DIGEST_AFTER_MINUTES = 15.0                   # a chat this quiet sends what was missed
DIGEST_SUBMIT = "127.0.0.1:25"                # the site's MTA, for digests
RETENTION_PURGE_INTERVAL = 3600.0             # seconds between purges of old mail records
RETENTION_PURGE_BATCH = 500                   # mail records per transaction
SESSION_LIFETIME_HOURS = 24 * 14
IDLE_AWAY_SECONDS = 300                       # no input for this long: away
HEARTBEAT_SECONDS = 15                        # a vanished page drops out within 2x this
LOGIN_ATTEMPTS_PER_MINUTE = 10
LOOKUPS_PER_MINUTE_PER_CLIENT = 600
CHAT_MESSAGE_MAX_CHARS = 4000
CHAT_MESSAGES_PER_MINUTE = 120                # per writer: a link holder cannot flood
LOOKUP_CACHE_MAILS = 50_000                   # mails whose lookup state stays in memory
LOOKUP_NO_RECORD_SECONDS = 5.0                # a lookup's "no record yet" is kept this long
ACCOUNTS_RELOAD_SECONDS = 0.5                 # how soon lookups see `mailtalk user` changes

# [dns]
DNS_NAMESERVERS: list[str] = []               # empty: the system resolver
DNS_NEGATIVE_TTL = 300                        # seconds a missing record is remembered
DNS_MAX_TTL = 3600

# Connections under a flood (not config keys yet). A client address is an
# IPv4 address or an IPv6 /64; loopback peers (and trusted proxies) count in the total only.
PRESENCE_MAX_CONNECTIONS_PER_CLIENT = 256     # open at once from one client address
PRESENCE_MAX_CONNECTIONS = 16384              # in all; at most half the open-file limit
PRESENCE_HEADER_TIMEOUT = 10.0                # seconds for a request's head to arrive
PRESENCE_REQUEST_TIMEOUT = 30.0               # seconds from a head to the response (not WebSockets)
PRESENCE_KEEPALIVE_TIMEOUT = 75.0             # an idle keep-alive connection (> nginx's 60 s upstream)
FILTER_MAX_CONNECTIONS_PER_CLIENT = 100       # >= the `mailtalk` transport's maxproc (10)
FILTER_MAX_CONNECTIONS = 1000                 # in all; at most 1/8 of the open-file limit
FILTER_CLIENT_TIMEOUT = 30.0                  # seconds of the client's time per transaction
FILTER_MIN_DATA_RATE = 500                    # bytes/s that extend it (Postfix's smtpd_min_data_rate)
