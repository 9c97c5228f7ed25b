"""Photos and other media in a patient's inbound message, read off Twilio's webhook form.

Twilio's incoming-message request carries ``NumMedia`` and, per item N from 0,
``MediaUrlN`` and ``MediaContentTypeN``. The URL names a Media subresource of the Message,
``https://api.twilio.com/2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media/{Sid}``
(Twilio, "Twilio's request to your incoming message Webhook URL" and "Media subresource");
a message holds at most 10 media (the same page). Anything else is dropped with a reason
the caller counts: we keep only links a nurse's browser can fetch from Twilio itself.
Pure: no I/O.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

MAX_MEDIA = 10  # Twilio: a message holds at most 10 media files
MAX_URL = 2048
# The host Twilio names media on (its REST API). Fetching such a URL answers with a
# redirect to Twilio's storage; we never fetch it ourselves.
MEDIA_HOSTS = frozenset({"api.twilio.com"})
MEDIA_PATH = re.compile(
    r"^/2010-04-01/Accounts/AC[0-9a-fA-F]{32}/Messages/[A-Z]{2}[0-9a-fA-F]{32}"
    r"/Media/ME[0-9a-fA-F]{32}$"
)
# A MIME type, type/subtype (RFC 6838 section 4.2 names: letters, digits, !#$&^_.+-).
CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
_URL_KEY = re.compile(r"^MediaUrl(\d{1,3})$")


class Dropped(StrEnum):
    """Why a media item was not kept (the label of the counter)."""

    TOO_MANY = "too_many"  # beyond MAX_MEDIA
    NOT_HTTPS = "not_https"
    NOT_TWILIO = "not_twilio"  # another host, a port, credentials, or not a Media path
    BAD_TYPE = "bad_content_type"


@dataclass(frozen=True, slots=True)
class Media:
    url: str
    content_type: str

    def as_json(self) -> dict[str, str]:
        return {"url": self.url, "content_type": self.content_type}


def _problem(url: str) -> Dropped | None:
    if len(url) > MAX_URL:
        return Dropped.NOT_TWILIO
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return Dropped.NOT_TWILIO
    if parts.scheme != "https":
        return Dropped.NOT_HTTPS
    if (
        parts.hostname not in MEDIA_HOSTS
        or parts.netloc != parts.hostname
        or port is not None
        or parts.query
        or parts.fragment
        or not MEDIA_PATH.match(parts.path)
    ):
        return Dropped.NOT_TWILIO
    return None


def media_of(form: Mapping[str, str]) -> tuple[tuple[Media, ...], Counter[Dropped]]:
    """The media kept (in Twilio's order, at most ``MAX_MEDIA``) and the count of those
    dropped by reason."""
    dropped: Counter[Dropped] = Counter()
    kept: list[Media] = []
    indexes = sorted(int(m.group(1)) for k in form if (m := _URL_KEY.match(k)))
    for n in indexes:
        url = form[f"MediaUrl{n}"].strip()
        content_type = form.get(f"MediaContentType{n}", "").strip().lower()
        problem = _problem(url)
        if problem is None and not CONTENT_TYPE.match(content_type):
            problem = Dropped.BAD_TYPE
        if problem is None and len(kept) >= MAX_MEDIA:
            problem = Dropped.TOO_MANY
        if problem is None:
            kept.append(Media(url, content_type))
        else:
            dropped[problem] += 1
    return tuple(kept), dropped
