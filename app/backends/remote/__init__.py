"""The hosted providers' shared machinery: what a provider module builds on.

A provider subclasses :class:`RemoteBackend` and fills in its protocol (see
:mod:`app.backends.remote.template`); everything it needs is importable from here. Behind this
face, each concern has its own module:

- :mod:`~app.backends.remote.template`: the job flow (submit once, watch, download, save) and
  its checkpoint, :class:`Ticket`;
- :mod:`~app.backends.remote.http`: paced requests, retries that never re-send a submit, and
  the error rules every provider shares;
- :mod:`~app.backends.remote.pacing`: the shared request budget, poll cadences, retry hints;
- :mod:`~app.backends.remote.retry`: what is transient and how long to wait, shared with model
  downloads (:mod:`app.models.transfer`);
- :mod:`~app.backends.remote.errors`: reading error answers of any shape;
- :mod:`~app.backends.remote.fields`: refusing, by name, the settings a provider's page does not
  list;
- :mod:`~app.backends.remote.io`: the input as sent, and the result as kept and saved;
- :mod:`~app.backends.remote.webhooks`: a loopback listener for webhooks (Cog's).
"""

from __future__ import annotations

from app.backends.remote.errors import (
    body_of,
    field_errors,
    is_content_rejection,
    message_of,
    object_of,
)
from app.backends.remote.http import SubmitNoAnswer
from app.backends.remote.io import InputFile, decode_data_url, prepare_input, stash, stash_path
from app.backends.remote.pacing import PollCadence, RequestBudget, retry_hint
from app.backends.remote.template import BROWSER_USER_AGENT, RemoteBackend, RemoteStatus, Ticket
from app.backends.remote.webhooks import WebhookListener

__all__ = [
    "BROWSER_USER_AGENT",
    "InputFile",
    "PollCadence",
    "RemoteBackend",
    "RemoteStatus",
    "RequestBudget",
    "SubmitNoAnswer",
    "Ticket",
    "WebhookListener",
    "body_of",
    "decode_data_url",
    "field_errors",
    "is_content_rejection",
    "message_of",
    "object_of",
    "prepare_input",
    "retry_hint",
    "stash",
    "stash_path",
]
