"""mailtalk: e-mail and chat joined inside the mail servers."""

__version__ = "0.1.0"
