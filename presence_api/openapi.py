"""The OpenAPI 3 document of the presence service's HTTP API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mailtalk import __version__
from mailtalk.constants import API_LOOKUP, API_MAILS, LOOKUP_MAX_RECIPIENTS
from presence_api.service import service

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}
_MAIL_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{22,64}$",
            "description": "The X-Mail-ID header of the mail"}


def document(public_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "mailtalk presence service",
            "version": __version__,
            "description": "Presence and chat links for mails sent through this site. "
                           "The lookup is public and cross-domain: receiving mail servers "
                           "ask it after finding this service through the sender domain's "
                           "_mailtalk TXT record.",
        },
        "servers": [{"url": public_url}],
        "components": {
            "securitySchemes": {
                "outbox": {"type": "http", "scheme": "bearer",
                           "description": "The site-internal token of this site's milter "
                                          "(derived from the site key)."},
            },
            "schemas": _schemas(),
        },
        "paths": _paths(),
    }


def _schemas() -> dict[str, Any]:
    return {
        "MailRecord": {
            "type": "object",
            "required": ["mail_id", "account", "recipients"],
            "properties": {
                "mail_id": _MAIL_ID,
                "account": {"type": "string", "example": "alice@a.example"},
                "message_id": {"type": "string"},
                "subject": {"type": "string"},
                "date": {"type": "string", "description": "The Date header"},
                "recipients": {"type": "array", "items": {"type": "string"}},
                "names": {"type": "object", "additionalProperties": {"type": "string"},
                          "description": "display names from From, To and Cc"},
                "body_text": {"type": "string"},
                "queue_id": {"type": "string"},
            },
        },
        "LookupRequest": {
            "type": "object",
            "required": ["account", "mail_id", "recipients"],
            "properties": {
                "account": {"type": "string", "description": "X-Messenger-Account"},
                "mail_id": _MAIL_ID,
                "recipients": {"type": "array", "maxItems": LOOKUP_MAX_RECIPIENTS,
                               "items": {"type": "string"}},
            },
        },
        "LookupAnswer": {
            "type": "object",
            "required": ["status", "checked", "links"],
            "properties": {
                "status": {"type": "string",
                           "enum": ["online", "away", "busy", "offline", "unknown"]},
                "checked": {"type": "string", "format": "date-time"},
                "links": {"type": "object", "additionalProperties": {
                    "type": "string", "format": "uri"},
                    "description": "recipient (domain lowercased) -> chat link"},
            },
        },
        "Error": _ERROR,
}


def _paths() -> dict[str, Any]:
    return {
        API_MAILS: {"post": {
            "summary": "Record a sent mail (site-internal: the milter's outbox)",
            "operationId": "recordMail",
            "security": [{"outbox": []}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/MailRecord"}}}},
            "responses": {
                "201": {"description": "Stored"},
                "200": {"description": "Already stored (idempotent on mail_id)"},
                "400": {"description": "Bad record (do not retry)", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "401": {"description": "Bad bearer token"},
            },
        }},
        API_LOOKUP: {"post": {
            "summary": "Presence of a mail's sender, and one chat link per recipient",
            "description": "Unknown account, wrong, forged or expired Mail-ID: the same "
                           "200 answer with status unknown and no links. Status unknown "
                           "with links: the mail is known, its sender's presence could "
                           "not be told (use the links).",
            "operationId": "lookup",
            "security": [],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/LookupRequest"}}}},
            "responses": {
                "200": {"description": "The answer", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/LookupAnswer"}}}},
                "400": {"description": "Malformed request"},
                "429": {"description": "Too many lookups from this client"},
            },
        }},
    }


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(document(service(request).cfg.presence.public_url))
