"""The config loader: typed values, derived defaults, one clear line per mistake."""

from pathlib import Path

import pytest

from mailtalk import defaults as D
from mailtalk.config import SCHEMA, ConfigError, HostPort, load, load_embedded, load_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "mailtalk.toml.example"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "mailtalk.toml"
    p.write_text(text)
    return p


def error_of(tmp_path: Path, text: str) -> str:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_file(p)
    msg = str(e.value)
    assert msg.startswith(str(p)), msg          # every message names the file
    assert "\n" not in msg                       # one line
    return msg


def test_example_config_loads_and_documents_every_key():
    cfg = load_file(EXAMPLE)
    assert cfg.domains.names == ("a.example",)
    assert cfg.milter.socket == "unix:/var/spool/postfix/mailtalk/milter.sock"
    text = EXAMPLE.read_text()
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"# {key} (" in text, f"[{section}] {key} is not documented in {EXAMPLE.name}"


def test_defaults_and_derived_values(tmp_path):
    p = write(tmp_path, f'[site]\nstate_dir = "{tmp_path}/st"\n[domains]\nnames = ["A.Example."]\n'
                        '[milter]\n[presence]\nlisten = "127.0.0.9:9000"\n')
    cfg = load_file(p)
    assert cfg.sections == {"site", "domains", "milter", "presence"}
    assert cfg.has("milter") and not cfg.has("filter")
    assert cfg.domains.names == ("a.example",)
    assert cfg.domains.login_domain == "a.example"
    assert cfg.site.secret_file == tmp_path / "st" / D.SECRET_FILE_NAME
    assert cfg.milter.outbox == tmp_path / "st" / D.OUTBOX_FILE_NAME
    assert cfg.milter.presence_api == "http://127.0.0.9:9000"
    assert cfg.presence.database == str(tmp_path / "st" / D.DATABASE_FILE_NAME)
    assert cfg.filter.listen == HostPort("127.0.0.1", 10025)
    assert cfg.filter.reinject == HostPort("127.0.0.1", 10026)
    assert cfg.filter.lookup_timeout == D.LOOKUP_TIMEOUT == 2.0
    assert cfg.dns.nameservers == ()


def test_embedded_defaults_run_everything_on_loopback():
    cfg = load_embedded()
    assert {"milter", "filter", "presence"} <= cfg.sections
    assert cfg.presence.listen.host == "127.0.0.1"
    assert cfg.filter.listen.host == "127.0.0.1"
    assert "127.0.0.1" in cfg.milter.socket


@pytest.mark.parametrize("text, where", [
    ('[milter]\nsockett = "inet:1@h"\n', "[milter] sockett: unknown key"),
    ('[miltr]\n', "[miltr]: unknown section"),
    ('[milter]\nsocket = "tcp:1@h"\n', "[milter] socket: expected inet:PORT@HOST or unix:/path"),
    ('[milter]\nsocket = "inet:99999@h"\n', "[milter] socket: bad port"),
    ('[filter]\nlisten = "127.0.0.1"\n', "[filter] listen: expected HOST:PORT"),
    ('[filter]\nlookup_timeout = "2"\n', "[filter] lookup_timeout: expected a number"),
    ('[filter]\nlookup_timeout = 0\n', "[filter] lookup_timeout: must be greater than 0"),
    ('[filter]\nmax_message_size = true\n', "[filter] max_message_size: expected an integer"),
    ('[presence]\npublic_url = "ftp://x"\n', "[presence] public_url: expected an http:// or https:// URL"),
    ('[dns]\nnameservers = ["ns.example"]\n', "[dns] nameservers: a nameserver must be an IP address"),
    ('[dns]\nnameservers = "127.0.0.1"\n', "[dns] nameservers: expected a list of strings"),
    ('[domains]\nnames = ["bad domain"]\n', "[domains] names: not a domain name"),
    ('[site]\nlog_level = "loud"\n', "[site] log_level: expected one of"),
    ('[site]\nevent_loop = "trio"\n', "[site] event_loop: expected one of auto, uvloop, asyncio"),
    ('[milter]\n', "[domains] names: must list at least one mail domain"),
    ('[dns]\nstatic = ["localhost"]\n', "[dns] static: expected a table of domain"),
    ('[dns]\nstatic = { localhost = "v=mailtalk1; api=https://chat.a.example" }\n',
     "[dns] static: localhost: a static record's api must be a loopback address"),
    ('[dns]\nstatic = { localhost = "v=mailtalk1" }\n', "[dns] static: localhost: no api= tag"),
    ('[domains]\nnames = ["a"]\n[presence]\npublic_url = "https://chat.a.example"\n'
     '[dns]\nstatic = { a = "self" }\n',
     '[dns] static: "self" needs a loopback [presence] public_url'),
    ('[presence]\nauth = "ldap"\n', "[presence] auth: expected one of local, imap, dovecot"),
    ('[domains]\nnames = ["a"]\n[presence]\nauth = "imap"\n',
     '[presence] imap: required with auth = "imap"'),
    ('[presence]\nimap = "https://mail.a"\n', "[presence] imap: expected imaps://HOST[:PORT]"),
    ('[presence]\nsubmit = "sendmail:bin/sendmail"\n', "[presence] submit: sendmail:PATH needs"),
    ('[presence]\ndigest_from = "no address"\n', "[presence] digest_from: expected an address"),
    ('[presence]\ndatabase = "postgresql://db.example/m"\n',
     "[presence] database: a PostgreSQL server off this host needs a password"),
    ('[filter\n', "not valid TOML"),
    ('filter = 1\n', "filter: expected a [filter] table"),
])
def test_bad_config_names_file_and_key(tmp_path, text, where):
    assert where in error_of(tmp_path, text)


def test_unreadable_file_is_named(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^{missing}: cannot read the config file"):
        load_file(missing)


def test_config_path_precedence(tmp_path, monkeypatch):
    env_file = write(tmp_path, '[domains]\nnames = ["env.example"]\n')
    cli_file = tmp_path / "cli.toml"
    cli_file.write_text('[domains]\nnames = ["cli.example"]\n')
    monkeypatch.setenv(D.CONFIG_ENV, str(env_file))
    assert load(None).domains.names == ("env.example",)
    assert load(str(cli_file)).domains.names == ("cli.example",)
    monkeypatch.setenv(D.CONFIG_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="missing.toml: cannot read"):
        load(None)          # an explicit path must exist: no silent fallback


def test_nameservers_and_ipv6(tmp_path):
    cfg = load_file(write(tmp_path, '[dns]\nnameservers = ["127.0.0.53:5353", "::1", "[::1]:53"]\n'
                                    '[filter]\nlisten = "[::1]:10025"\n'))
    assert cfg.dns.nameservers == (HostPort("127.0.0.53", 5353), HostPort("::1", 53), HostPort("::1", 53))
    assert cfg.filter.listen == HostPort("::1", 10025)
    assert str(cfg.filter.listen) == "[::1]:10025"


def test_event_loop_uvloop_must_be_installed(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvloop" else real(name, *a))
    assert "[site] event_loop: uvloop is not installed" in error_of(
        tmp_path, '[site]\nevent_loop = "uvloop"\n')
    assert load_file(write(tmp_path, '[site]\nevent_loop = "auto"\n')).site.event_loop == "auto"


def test_dkim_needs_the_verifiers_authserv_id(tmp_path):
    msg = error_of(tmp_path, '[filter]\ndkim = "require"\n')
    assert "[filter] authserv_id: required" in msg
    msg = error_of(tmp_path, '[filter]\ndkim = "sometimes"\n')
    assert "[filter] dkim" in msg
