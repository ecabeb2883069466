"""`mailtalk check`'s look at Postfix: are our milter and content-filter lines there?

With `[filter] mode = "milter"` the receiving side is a milter too: it must be in
`smtpd_milters`, and a `content_filter` to `[filter] listen` is a mistake (nothing
listens there, so Postfix would defer every mail).

Reads the configuration with `postconf` (main.cf values, `-P` for master.cf `-o`
overrides, `-M` for the services), so it sees what Postfix sees. `MAIL_CONFIG`
in the environment points postconf at another instance's config directory.
Returns (state, text) pairs: "ok", "FAIL" (text says what to do) or "skip".
"""

from __future__ import annotations

import re
import shutil
import subprocess

from mailtalk.config import Config, HostPort
from mailtalk.config_values import UnixPath

Finding = tuple[str, str]
_MILTER_TOKEN = re.compile(r"(?:inet6?|unix|local):[^\s,{}]+")


def _postconf(*args: str) -> str:
    r = subprocess.run(["postconf", *args], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise RuntimeError((r.stderr or r.stdout).strip().splitlines()[-1:] or ["failed"])
    return r.stdout


def _main_values(*names: str) -> dict[str, str]:
    out = {}
    for line in _postconf(*names).splitlines():
        name, _, value = line.partition("=")
        out[name.strip()] = value.strip()
    return out


def _overrides() -> list[tuple[str, str, str, str]]:
    """master.cf `-o` settings: (service, type, parameter, value)."""
    out = []
    for line in _postconf("-P").splitlines():
        key, _, value = line.partition("=")
        parts = key.strip().split("/")
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2], value.strip()))
    return out


def _services() -> list[tuple[str, str]]:
    """master.cf services: (name, type)."""
    return [(f[0], f[1]) for f in (line.split() for line in _postconf("-M").splitlines())
            if len(f) >= 2]


def _milter_forms(sock: str, queue_dir: str) -> set[str]:
    """How Postfix may name our milter socket (pymilter's form differs from Postfix's)."""
    kind, _, rest = sock.partition(":")
    if kind in ("unix", "local"):
        paths = {rest}
        q = queue_dir.rstrip("/")
        if q and rest.startswith(q + "/"):
            inside = rest[len(q) + 1:]
            paths.add(inside)               # relative to the queue directory (documented)
            paths.add("/" + inside)         # absolute inside a chrooted smtpd's jail
        return {f"{k}:{p}" for p in paths for k in ("unix", "local")}
    port, _, host = rest.partition("@")
    hosts = {host} if host else {"127.0.0.1", "localhost", "[::1]"}
    if host == "127.0.0.1":
        hosts.add("localhost")
    return {f"{k}:{h}:{port}" for h in hosts for k in ("inet", "inet6")}


def _postfix_form(sock: str, queue_dir: str) -> str:
    """The smtpd_milters entry to suggest for our socket."""
    kind, _, rest = sock.partition(":")
    if kind in ("unix", "local"):
        q = queue_dir.rstrip("/")
        return "unix:" + (rest[len(q) + 1:] if q and rest.startswith(q + "/") else rest)
    port, _, host = rest.partition("@")
    return f"{kind}:{host or '127.0.0.1'}:{port}"


def _hostport_matches(dest: str, hp: HostPort) -> bool:
    m = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d+)", dest.strip())
    return m is not None and m.group(1) == hp.host and int(m.group(2)) == hp.port


def _milter_places(sock: str, main: dict[str, str],
                   overrides: list[tuple[str, str, str, str]]) -> list[str]:
    """Where `smtpd_milters` names the milter socket `sock`: main.cf, master.cf -o."""
    forms = _milter_forms(sock, main.get("queue_directory", ""))
    places = [("main.cf", main.get("smtpd_milters", ""))]
    places += [(f"master.cf {s}/{t}", v) for s, t, p, v in overrides if p == "smtpd_milters"]
    return [w for w, v in places if forms & set(_MILTER_TOKEN.findall(v))]


def _content_filters(main: dict[str, str], overrides: list[tuple[str, str, str, str]],
                     hp: HostPort) -> list[tuple[str, str]]:
    """(where, value) of every content_filter that delivers to `hp`."""
    places = [("main.cf", main.get("content_filter", ""))]
    places += [(f"master.cf {s}/{t}", v) for s, t, p, v in overrides
               if p == "content_filter" and v]
    return [(w, v) for w, v in places if v and _hostport_matches(v.partition(":")[2], hp)]


_LIST_ITEM = re.compile(r"(?:inet6?|unix|local):[^\s,{}]+|\{[^{}]*\}")
_SEPARATORS = re.compile(r"[\s,]*")


def _stray(value: str) -> str:
    """A milter list from its first non-milter word on (`non_smtpd_milters = ...` when
    an indented line continued the parameter above it), or ""."""
    pos = _SEPARATORS.match(value).end()
    while pos < len(value):
        item = _LIST_ITEM.match(value, pos)
        if item is None:
            return value[pos:].strip()
        pos = _SEPARATORS.match(value, item.end()).end()
    return ""


def _milter_lists(main: dict[str, str], overrides: list[tuple[str, str, str, str]]
                  ) -> list[tuple[str, str]]:
    """(where, value) of every milter list Postfix has: main.cf and master.cf -o."""
    lists = [(f"main.cf {n}", main.get(n, "")) for n in ("smtpd_milters", "non_smtpd_milters")]
    return lists + [(f"master.cf {s}/{t} {p}", v) for s, t, p, v in overrides
                    if p in ("smtpd_milters", "non_smtpd_milters")]


def _check_milter(cfg: Config, main: dict[str, str],
                  overrides: list[tuple[str, str, str, str]]) -> list[Finding]:
    """The sending milter: on the submission services (-o in master.cf) and in
    non_smtpd_milters, never in main.cf's smtpd_milters (port 25: it would strip other
    sites' claims), first in each list (a DKIM signer after it signs our fields)."""
    forms = _milter_forms(cfg.milter.socket, main.get("queue_directory", ""))
    form = _postfix_form(cfg.milter.socket, main.get("queue_directory", ""))
    out: list[Finding] = []
    ours: list[str] = []
    for where, value in _milter_lists(main, overrides):
        if stray := _stray(value):
            out.append(("FAIL", f"Postfix: {where} = {value}: `{stray}` is not a milter: an "
                        f"indented line continues the parameter above it; start each "
                        f"parameter at the beginning of its line"))
        names = _MILTER_TOKEN.findall(value)
        if not forms & set(names):
            continue
        ours.append(where)
        if names[0] not in forms:
            out.append(("FAIL", f"Postfix: {where} = {value}: put {form} first (a DKIM "
                        f"signer listed before it signs the mail without our fields)"))
    if "main.cf smtpd_milters" in ours:
        out.append(("FAIL", f"Postfix: main.cf smtpd_milters has the sending milter: it "
                    f"then runs on port 25 too and removes other sites' X-Messenger-Account "
                    f"and X-Mail-ID; move it to `-o smtpd_milters={form}` on the submission "
                    f"services in master.cf (deploy/postfix/sender-master.cf)"))
    submission = [w for w in ours if w.startswith("master.cf") and "non_smtpd" not in w]
    if submission:
        out.append(("ok", f"Postfix: smtpd_milters has the milter ({', '.join(submission)})"))
    else:
        out.append(("FAIL", f"Postfix: no submission service has the milter: add `-o "
                    f"smtpd_milters={form}` to the submission and submissions services in "
                    f"master.cf (deploy/postfix/sender-master.cf), then `postfix reload`"))
    if "main.cf non_smtpd_milters" in ours:
        out.append(("ok", "Postfix: non_smtpd_milters has the milter"))
    else:
        out.append(("FAIL", f"Postfix: non_smtpd_milters lacks the milter: add "
                    f"`non_smtpd_milters = {form}` to main.cf (mail handed to "
                    f"/usr/sbin/sendmail then loses forged copies of our fields too)"))
    actions = [main.get("milter_default_action", "")]
    actions += [v for s, t, p, v in overrides if p == "milter_default_action"
                and any(w.startswith(f"master.cf {s}/{t} ") for w in ours)]
    if "accept" in actions:
        out.append(("ok", "Postfix: milter_default_action = accept"))
    else:
        out.append(("FAIL", "Postfix: milter_default_action is not accept: set "
                    "`milter_default_action = accept`, or a stopped milter defers or "
                    "rejects mail"))
    return out


def _check_filter(cfg: Config, main: dict[str, str],
                  overrides: list[tuple[str, str, str, str]],
                  services: list[tuple[str, str]]) -> list[Finding]:
    out: list[Finding] = []
    hits = _content_filters(main, overrides, cfg.filter.listen)
    if not hits:
        out.append(("FAIL", f"Postfix: no content_filter to {cfg.filter.listen}: add "
                    f"`content_filter = mailtalk:[{cfg.filter.listen.host}]:"
                    f"{cfg.filter.listen.port}` to main.cf (or -o on the smtpd that "
                    f"receives mail) and the `mailtalk` transport to master.cf"))
    else:
        where, value = hits[0]
        transport = value.partition(":")[0]
        out.append(("ok", f"Postfix: content_filter = {value} ({where})"))
        if not any(n == transport and t == "unix" for n, t in services):
            out.append(("FAIL", f"Postfix: master.cf has no `{transport} unix ... smtp` "
                        f"service for the content_filter: add it (deploy/postfix/)"))
    re_name = f"{cfg.filter.reinject.host}:{cfg.filter.reinject.port}"
    names = {re_name, str(cfg.filter.reinject.port)}
    reinject = [n for n, t in services if n in names and t == "inet"]
    if not reinject:
        out.append(("FAIL", f"Postfix: master.cf has no re-injection service on {re_name}: "
                    f"add `{re_name} inet n - n - 10 smtpd -o content_filter= "
                    f"-o receive_override_options=no_unknown_recipient_checks,"
                    f"no_header_body_checks,no_milters` (deploy/postfix/)"))
        return out
    own = {p: v for s, t, p, v in overrides if s == reinject[0] and t == "inet"}
    if main.get("content_filter") and own.get("content_filter", None) != "":
        out.append(("FAIL", f"Postfix: the re-injection service {re_name} lacks "
                    f"`-o content_filter=`: mail would loop through the filter"))
    elif "no_milters" not in own.get("receive_override_options", "") and main.get("smtpd_milters"):
        out.append(("FAIL", f"Postfix: the re-injection service {re_name} lacks "
                    f"`-o receive_override_options=...,no_milters`: mail would pass the "
                    f"milters twice"))
    else:
        out.append(("ok", f"Postfix: re-injection service {re_name}"))
    return out


def _check_receiving_milter(cfg: Config, main: dict[str, str],
                            overrides: list[tuple[str, str, str, str]]) -> list[Finding]:
    """`[filter] mode = "milter"`: the receiving milter in smtpd_milters, no content_filter."""
    sock = cfg.filter.milter_socket
    out: list[Finding] = []
    where = _milter_places(sock, main, overrides)
    if where:
        out.append(("ok", f"Postfix: smtpd_milters has the receiving milter {sock} "
                    f"({', '.join(where)})"))
    else:
        form = _postfix_form(sock, main.get("queue_directory", ""))
        out.append(("FAIL", f"Postfix: no smtpd_milters entry for the receiving milter {sock} "
                    f"([filter] mode = \"milter\"): add `smtpd_milters = {form}` to main.cf "
                    f"(or `-o smtpd_milters=...` on the smtpd that receives mail from other "
                    f"sites in master.cf), then `postfix reload`; or, on Postfix, use the "
                    f"content filter (mode = \"smtp\", deploy/postfix/)"))
    for w, value in _content_filters(main, overrides, cfg.filter.listen):
        out.append(("FAIL", f"Postfix: content_filter = {value} ({w}), but [filter] mode = "
                    f"\"milter\": nothing listens on {cfg.filter.listen}, so Postfix defers "
                    f"every mail: remove that content_filter, or set mode = \"smtp\""))
    return out


_LMTP_TRANSPORTS = ("virtual_transport", "mailbox_transport", "local_transport")


def _lmtp_matches(value: str, target: HostPort | UnixPath, queue_dir: str) -> bool:
    """Whether a transport value `lmtp:inet:H:P`, `lmtp:H:P`, `lmtp:unix:PATH` (PATH
    relative to the queue directory, as lmtp(8) runs chrooted) reaches `target`."""
    kind, _, dest = value.strip().partition(":")
    if kind != "lmtp":
        return False
    if dest.startswith("unix:"):
        path = dest[len("unix:"):]
        if not path.startswith("/"):
            path = f"{queue_dir.rstrip('/')}/{path}"
        return isinstance(target, UnixPath) and path == target.path
    if dest.startswith("inet:"):
        dest = dest[len("inet:"):]
    return isinstance(target, HostPort) and _hostport_matches(dest, target)


def _check_lmtp(cfg: Config, main: dict[str, str]) -> list[Finding]:
    """`[filter] mode = "lmtp"`: mailbox delivery goes over LMTP to the hook."""
    target = cfg.filter.listen
    hits = [k for k in _LMTP_TRANSPORTS
            if _lmtp_matches(main.get(k, ""), target, main.get("queue_directory", ""))]
    out: list[Finding] = []
    if hits:
        out.append(("ok", f"Postfix: {', '.join(f'{k} = {main[k]}' for k in hits)} "
                    f"delivers to the LMTP hook"))
    else:
        form = (f"lmtp:inet:{target.host}:{target.port}" if isinstance(target, HostPort)
                else f"lmtp:unix:{target.path}")
        out.append(("FAIL", f"Postfix: no virtual_transport or mailbox_transport delivers to "
                    f"the LMTP hook {target}: set `virtual_transport = {form}` (or "
                    f"mailbox_transport for local users) in main.cf "
                    f"(deploy/postfix/receiver-lmtp-main.cf)"))
    if main.get("content_filter", "").startswith("mailtalk:"):
        out.append(("FAIL", f"Postfix: content_filter = {main['content_filter']}, but [filter] "
                    f"mode = \"lmtp\": remove it (the hook at delivery replaces it)"))
    return out


def check(cfg: Config) -> list[Finding]:
    if not (cfg.has("milter") or cfg.has("filter")):
        return [("skip", "Postfix: no [milter] or [filter] section here")]
    if shutil.which("postconf") is None:
        return [("skip", "Postfix: no postconf on this host (Sendmail? see deploy/sendmail/)")]
    try:
        main = _main_values("content_filter", "smtpd_milters", "non_smtpd_milters",
                            "milter_default_action", "queue_directory", *_LMTP_TRANSPORTS)
        overrides, services = _overrides(), _services()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return [("FAIL", f"Postfix: postconf failed: {e}; for another instance set "
                 f"MAIL_CONFIG=<its config directory>")]
    out: list[Finding] = []
    if cfg.has("milter"):
        out += _check_milter(cfg, main, overrides)
    if cfg.has("filter") and cfg.filter.mode == "milter":
        out += _check_receiving_milter(cfg, main, overrides)
    elif cfg.has("filter") and cfg.filter.mode == "lmtp":
        out += _check_lmtp(cfg, main)
    elif cfg.has("filter"):
        out += _check_filter(cfg, main, overrides, services)
    return out
