"""Fixed names and hard limits: these are interfaces, not settings."""

HDR_ACCOUNT = "X-Messenger-Account"
HDR_MAIL_ID = "X-Mail-ID"
HDR_ONLINE = "X-Sender-Online"
HDR_DIGEST = "X-Mailtalk-Digest"   # on the presence service's digests (mailid.digest_token)
OUR_HEADERS = (HDR_ACCOUNT, HDR_MAIL_ID, HDR_ONLINE)

DNS_LABEL = "_mailtalk"
DNS_VERSION = "v=mailtalk1"

# Mail-ID: 22 to 64 characters of A-Z a-z 0-9 - _
MAIL_ID_PATTERN = r"[A-Za-z0-9_-]{22,64}"

# HTTP API paths of the presence service (documented in /openapi.json).
API_MAILS = "/api/v1/mails"        # site-internal: the milter's outbox records sent mails
API_LOOKUP = "/api/v1/lookup"      # public: receiving hooks ask for presence and links

# Hard safety limits.
LOOKUP_RESPONSE_MAX_BYTES = 64 * 1024
LOOKUP_MAX_RECIPIENTS = 100
TXT_RECORD_MAX_BYTES = 2048
DNS_CACHE_MAX_ENTRIES = 10000      # discovery cache: oldest entries dropped beyond this
