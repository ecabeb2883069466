"""The HTML pages: log-in, the sender's conversations, the link page, and security headers.

Pages are rendered server-side with jinja2 (autoescape on for every template) and
carry one small script (static/app.js) that talks over the WebSocket and writes
data into the page with textContent only. Every POST form carries a CSRF token.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import jinja2
from aiohttp import web

from mailtalk import metrics
from mailtalk.mailid import is_well_formed
from presence_api.api import norm_account
from presence_api.auth import BROWSER_COOKIE, PRE_COOKIE, SESSION_COOKIE
from presence_api.auth_external import Unavailable
from presence_api.chat import mail_view
from presence_api.service import Service, client_ip, service
from presence_api.store import MODES

log = logging.getLogger("mailtalk.presence.web")

BROWSER_COOKIE_AGE = 400 * 86400     # seconds: the longest browsers keep a cookie

HERE = Path(__file__).parent
CONVERSATIONS_SHOWN = 200

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                          autoescape=True, trim_blocks=True, lstrip_blocks=True)
_env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else ""
# "Alice Example <alice@a.example>", or the address alone when the mail gave no name.
_env.filters["person"] = lambda addr, names: (f"{names[addr.lower()]} <{addr}>"
                                              if names and addr.lower() in names else addr)


def render(template: str, http_status: int = 200, **ctx: Any) -> web.Response:
    return web.Response(text=_env.get_template(template).render(**ctx), status=http_status,
                        content_type="text/html", charset="utf-8")


def _harden(svc: Service, resp: web.StreamResponse) -> None:
    ws_origin = re.sub(r"^http", "ws", svc.origin)
    h = resp.headers
    h.setdefault("Content-Security-Policy",
                 "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                 f"connect-src 'self' {ws_origin}; form-action 'self'; base-uri 'none'; "
                 "frame-ancestors 'none'")
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    # Link pages have their credential in the URL: never send it on as a Referer.
    h.setdefault("Referrer-Policy", "no-referrer")
    if h.get("Content-Type", "").startswith("text/html"):
        h.setdefault("Cache-Control", "no-store")


@web.middleware
async def security_headers(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except web.HTTPException as e:
        _harden(service(request), e)
        raise
    if not resp.prepared:          # a WebSocket has sent its headers already
        _harden(service(request), resp)
    return resp


def _set_cookie(svc: Service, resp: web.StreamResponse, name: str, value: str,
                max_age: int | None) -> None:
    resp.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="Lax",
                    secure=svc.secure)


async def _session(request: web.Request) -> tuple[str, str] | None:
    """(account, session token) of a logged-in request, else None."""
    token = request.cookies.get(SESSION_COOKIE)
    account = await service(request).auth.session_account(token)
    return (account, token) if account and token else None


# --- log-in / log-out

async def login_page(request: web.Request, error: str = "", status: int = 200,
                     account: str = "") -> web.Response:
    svc = service(request)
    pre = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(24)
    resp = render("login.html", http_status=status, error=error, account=account,
                  csrf=svc.auth.csrf_token(pre), title="Log in")
    _set_cookie(svc, resp, PRE_COOKIE, pre, None)
    return resp


async def get_login(request: web.Request) -> web.StreamResponse:
    if await _session(request):
        raise web.HTTPSeeOther("/")
    return await login_page(request)


async def post_login(request: web.Request) -> web.StreamResponse:
    svc = service(request)
    form = await request.post()
    if not svc.auth.csrf_ok(request.cookies.get(PRE_COOKIE), str(form.get("csrf", ""))):
        return await login_page(request, "The form expired; please try again.", 403)
    account = norm_account(str(form.get("account", ""))[:320]) or ""
    password = str(form.get("password", ""))[:1024]
    ip = client_ip(request)
    if svc.auth.login_blocked(ip, account):
        metrics.RATE_LIMITED.labels("login").inc()
        log.warning("log-in rate limit hit for %s from %s", account, ip)
        return await login_page(request, "Too many failed log-ins; wait a minute.", 429, account)
    try:
        token = await svc.auth.login(ip, account, password)
    except Unavailable as e:
        log.warning("log-in for %s from %s not checked: %s", account, ip, e)
        return await login_page(request, "Your mail server could not check the password "
                                "just now. Please try again in a minute.", 503, account)
    if token is None:
        return await login_page(request, "Wrong account or password.", 401, account)
    resp = web.HTTPSeeOther("/")
    _set_cookie(svc, resp, SESSION_COOKIE, token, svc.cfg.presence.session_lifetime_hours * 3600)
    resp.del_cookie(PRE_COOKIE, path="/")
    raise resp


async def post_logout(request: web.Request) -> web.StreamResponse:
    svc = service(request)
    sess = await _session(request)
    form = await request.post()
    if sess is None:
        raise web.HTTPSeeOther("/login")
    if not svc.auth.csrf_ok(sess[1], str(form.get("csrf", ""))):
        raise web.HTTPForbidden(text="bad CSRF token")
    await svc.auth.logout(sess[1])
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(SESSION_COOKIE, path="/")
    raise resp


async def post_status(request: web.Request) -> web.StreamResponse:
    """The no-script way to choose busy / appear offline (the script uses the WebSocket)."""
    svc = service(request)
    sess = await _session(request)
    if sess is None:
        raise web.HTTPSeeOther("/login")
    form = await request.post()
    if not svc.auth.csrf_ok(sess[1], str(form.get("csrf", ""))):
        raise web.HTTPForbidden(text="bad CSRF token")
    mode = str(form.get("mode", ""))
    if mode not in MODES:
        raise web.HTTPBadRequest(text="mode: one of " + ", ".join(MODES))
    await svc.lookups.set_mode(sess[0], mode)
    await svc.presence.set_mode(sess[0], mode)
    raise web.HTTPSeeOther("/")


async def _digest_choice(svc: Service, address: str) -> dict[str, bool]:
    """Whether the page offers the digest switch (site-wide on), and its state."""
    if not svc.cfg.presence.digest:
        return {"digests_site": False, "digests_on": False}
    return {"digests_site": True,
            "digests_on": address.lower() not in await svc.store.digests_off([address])}


# --- the sender's pages

async def _home(request: web.Request, mail_id: str | None) -> web.StreamResponse:
    svc = service(request)
    sess = await _session(request)
    if sess is None:
        raise web.HTTPSeeOther("/login")
    account, token = sess
    mail = None
    if mail_id is not None:
        mail = await svc.store.get_mail(mail_id) if is_well_formed(mail_id) else None
        if mail is None or not await svc.chat.may_use(account, mail):
            raise web.HTTPNotFound(text="no such conversation")
    acct = await svc.store.get_account(account)
    convs = await svc.store.conversations(account, CONVERSATIONS_SHOWN)
    return render("home.html", title="mailtalk", you=account, csrf=svc.auth.csrf_token(token),
                  conversations=convs,
                  mail=mail_view(mail, mail.account == account) if mail else None,
                  mode=acct.mode if acct else "auto", modes=MODES,
                  status=svc.presence.status(account),
                  members=await svc.store.members(mail.mail_id) if mail else [],
                  max_chars=svc.cfg.presence.chat_message_max_chars,
                  **await _digest_choice(svc, account))


async def get_home(request: web.Request) -> web.StreamResponse:
    return await _home(request, None)


async def get_conversation(request: web.Request) -> web.StreamResponse:
    return await _home(request, request.match_info["mail_id"])


# --- the recipient's link page

async def get_link(request: web.Request) -> web.StreamResponse:
    svc = service(request)
    token = request.match_info["token"]
    # Verify and read only: a mail scanner that fetches the URL stores nothing. The
    # page's WebSocket stores what the chat needs (ws.py), and its "open" frame joins
    # the room and tells the sender.
    opened = await svc.links.open(token, svc.clock())
    if opened.link is None or opened.mail is None:
        if opened.reason == "expired":
            return render("gone.html", http_status=410, title="Link expired",
                          text="This chat link has expired.")
        return render("gone.html", http_status=404, title="No such link",
                      text="This chat link is not valid.")
    link, mail = opened.link, opened.mail
    resp = render("link.html", title=f"{mail.subject or '(no subject)'} \u2013 mailtalk",
                  you=link.recipient,
                  token=token, mail=mail_view(mail, False),
                  sender_status=svc.presence.answer_status(mail.account),
                  members=await svc.store.members(mail.mail_id),
                  max_chars=svc.cfg.presence.chat_message_max_chars,
                  **await _digest_choice(svc, link.recipient))
    if not request.cookies.get(BROWSER_COOKIE):
        _set_cookie(svc, resp, BROWSER_COOKIE, secrets.token_urlsafe(16), BROWSER_COOKIE_AGE)
    return resp


def routes() -> list[web.AbstractRouteDef]:
    return [
        web.get("/", get_home),
        web.get("/m/{mail_id}", get_conversation),
        web.get("/login", get_login),
        web.post("/login", post_login),
        web.post("/logout", post_logout),
        web.post("/status", post_status),
        web.get("/c/{token}", get_link),
        web.static("/static", HERE / "static"),
    ]
