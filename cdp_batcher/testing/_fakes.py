"""The fake APIs behind the collector: OpenCDP's gateway and Customer.io's batch endpoint.

They check credentials and bodies the way the real services do and say what they accepted;
they know nothing of sockets (the server) or of faults (those come first).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import threading
from typing import Any, Callable, Optional

from ._records import CUSTOMERIO, OPENCDP, Events, dumps, get_header

__all__ = [
    "CIO_BATCH_PATH",
    "CIO_MAX_BODY_BYTES",
    "CIO_MAX_ENTRY_BYTES",
    "PING_PATH",
    "FakeApis",
    "RejectPredicate",
    "cio_line",
    "destination_of",
    "opencdp_line",
]

logger = logging.getLogger("cdp_batcher.testing")

#: Customer.io's limit on a whole ``/api/v2/batch`` request body.
CIO_MAX_BODY_BYTES = 500_000
#: Customer.io's limit on one batch entry (its compact JSON encoding).
CIO_MAX_ENTRY_BYTES = 32_000

CIO_BATCH_PATH = "/api/v2/batch"
PING_PATH = "/v1/health/ping"
_PERSON_CALLS = {
    "/v1/persons/identify": "identify",
    "/v1/persons/track": "track",
    "/v1/persons/registerDevice": "register_device",
}
_SEND_CALLS = {
    "/v1/send/email": "send_email",
    "/v1/send/push": "send_push",
    "/v1/send/sms": "send_sms",
}
_SEND_IDENTIFIER_KEYS = ("id", "email", "cdp_id")
_PRINT_LIMIT = 200

RejectPredicate = Callable[[dict[str, Any]], Optional[str]]


def destination_of(path: str) -> str:
    return CUSTOMERIO if path.startswith("/api/") else OPENCDP


# --------------------------------------------------------------------------- printing
def _short(obj: Any) -> str:
    text = json.dumps(obj, ensure_ascii=False, default=str)
    return text if len(text) <= _PRINT_LIMIT else text[: _PRINT_LIMIT - 3] + "..."


def opencdp_line(call: str, body: Any, count: int) -> str:
    b = body if isinstance(body, dict) else {}
    ident = b.get("identifier", "")
    if call == "track":
        detail = f"{ident} {b.get('eventName', '')} {_short(b.get('properties', {}))}"
    elif call == "identify":
        detail = f"{ident} {_short(b.get('properties', {}))}"
    elif call == "register_device":
        detail = f"{ident} {b.get('platform', '')} {b.get('deviceId', '')}"
    else:
        detail = _short(body)
    return f"[opencdp] {call} {detail}  (#{count})"


def cio_line(entry: dict[str, Any], count: int) -> str:
    action = entry.get("action", "?")
    ids = entry.get("identifiers")
    ident = next(iter(ids.values()), "") if isinstance(ids, dict) and ids else ""
    if action == "event":
        detail = f"{ident} {entry.get('name', '')} {_short(entry.get('attributes', {}))}"
    elif action == "identify":
        detail = f"{ident} {_short(entry.get('attributes', {}))}"
    elif action in ("add_device", "delete_device"):
        device = entry.get("device")
        platform = device.get("platform", "") if isinstance(device, dict) else ""
        detail = f"{ident} {platform}"
    else:
        detail = str(ident)
    return f"[customerio] {action} {detail}  (#{count})"


def _cio_entry_problem(entry: Any) -> Optional[str]:
    """A reason the real API would reject this batch entry, or None."""
    if not isinstance(entry, dict):
        return "entry must be an object"
    if not isinstance(entry.get("type"), str) or not entry["type"]:
        return "type is required"
    if not isinstance(entry.get("action"), str) or not entry["action"]:
        return "action is required"
    if entry["type"] == "person":
        ids = entry.get("identifiers")
        if not isinstance(ids, dict) or len(ids) != 1:
            return "identifiers must hold exactly one of id, email, phone, cio_id"
        if entry["action"] == "event" and (not isinstance(entry.get("name"), str) or not entry["name"]):
            return "name is required"
    return None


# --------------------------------------------------------------------------- the APIs
class FakeApis:
    """Answers a request no fault intercepted: ``(status, body, accepted events)``."""

    def __init__(
        self, api_key: Optional[str], cio_site_id: Optional[str], cio_api_key: Optional[str]
    ) -> None:
        self._api_key = api_key
        self._cio_site_id = cio_site_id
        self._cio_api_key = cio_api_key
        self._lock = threading.Lock()
        self._rejectors: list[RejectPredicate] = []
        self.cio_max_body = CIO_MAX_BODY_BYTES

    def reject_cio_entries(self, predicate: RejectPredicate) -> None:
        with self._lock:
            self._rejectors.append(predicate)

    def set_cio_max_body(self, nbytes: int) -> None:
        with self._lock:
            self.cio_max_body = nbytes

    def reset(self) -> None:
        with self._lock:
            self._rejectors.clear()
            self.cio_max_body = CIO_MAX_BODY_BYTES

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes, parsed: Any
    ) -> tuple[int, bytes, Events]:
        """Answer a request that no fault intercepted: (status, body, accepted events)."""
        if path == CIO_BATCH_PATH:
            if method != "POST":
                return 405, dumps({"error": "method not allowed"}), []
            return self._answer_cio(headers, body, parsed)
        if path == PING_PATH:
            if method != "GET":
                return 405, dumps({"error": "method not allowed"}), []
            return 200, dumps({"status": "ok"}), []
        call = _PERSON_CALLS.get(path) or _SEND_CALLS.get(path)
        if call is None:
            return 404, dumps({"error": "not found"}), []
        if method != "POST":
            return 405, dumps({"error": "method not allowed"}), []
        auth = get_header(headers, "Authorization")
        if not auth or (self._api_key is not None and auth != self._api_key):
            return 401, dumps({"error": "unauthorized"}), []
        problem = _opencdp_problem(call, body, parsed)
        if problem is not None:
            return 400, dumps({"error": problem}), []
        answer: dict[str, Any] = {"success": True}
        if call.startswith("send_"):
            answer["delivery_id"] = secrets.token_hex(12)
        event = {"call": call, "path": path, "body": parsed}
        return 200, dumps(answer), [(OPENCDP, event)]

    def _answer_cio(self, headers: dict[str, str], body: bytes, parsed: Any) -> tuple[int, bytes, Events]:
        if not self._cio_auth_ok(get_header(headers, "Authorization")):
            return 401, dumps({"errors": [{"reason": "unauthorized", "message": "unauthorized"}]}), []
        with self._lock:
            max_body = self.cio_max_body
            rejectors = list(self._rejectors)
        if len(body) > max_body:
            message = f"request body is {len(body)} bytes, over the {max_body} byte limit"
            return 413, dumps({"errors": [{"reason": "request too large", "message": message}]}), []
        if not isinstance(parsed, dict) or not isinstance(parsed.get("batch"), list):
            message = 'body must be a JSON object {"batch": [...]}'
            return 400, dumps({"errors": [{"reason": "invalid", "field": "batch", "message": message}]}), []
        errors: list[dict[str, Any]] = []
        accepted: Events = []
        for index, entry in enumerate(parsed["batch"]):
            reason = _cio_entry_problem(entry)
            if reason is None and len(dumps(entry)) > CIO_MAX_ENTRY_BYTES:
                reason = "entry too large"
            if reason is None:
                for predicate in rejectors:
                    try:
                        reason = predicate(entry)
                    except Exception as exc:
                        logger.debug("collector: reject predicate raised", exc_info=True)
                        reason = f"reject predicate raised {type(exc).__name__}"
                    if reason:
                        break
            if reason:
                errors.append(
                    {"batch_index": index, "reason": reason, "field": f"batch[{index}]", "message": reason}
                )
            else:
                accepted.append((CUSTOMERIO, entry))
        if errors:
            return 207, dumps({"errors": errors}), accepted
        return 200, b"{}", accepted

    def _cio_auth_ok(self, auth: Optional[str]) -> bool:
        if not auth or auth[:6].lower() != "basic ":
            return False
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return False
        site_id, sep, api_key = decoded.partition(":")
        if not sep:
            return False
        if self._cio_site_id is not None and site_id != self._cio_site_id:
            return False
        return self._cio_api_key is None or api_key == self._cio_api_key


def _non_empty(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _opencdp_problem(call: str, body: bytes, parsed: Any) -> Optional[str]:
    if not body:
        return "request body is required"
    if not isinstance(parsed, dict):
        return "request body must be a JSON object"
    if call.startswith("send_"):
        ids = parsed.get("identifiers")
        if not isinstance(ids, dict):
            return "identifiers is required"
        if sum(1 for k in _SEND_IDENTIFIER_KEYS if k in ids) != 1 or len(ids) != 1:
            return "identifiers must contain exactly one of: id, email, or cdp_id"
        return None
    if not _non_empty(parsed.get("identifier")):
        return "Identifier cannot be empty"
    if call == "track" and not _non_empty(parsed.get("eventName")):
        return "Event name cannot be empty"
    if call == "register_device" and not _non_empty(parsed.get("deviceId")):
        return "device ID required"
    if "properties" in parsed and not isinstance(parsed["properties"], dict):
        return "properties must be an object"
    return None
