"""Customer.io Track API (dual-write): real batches on ``POST /api/v2/batch``.

identify/track calls arrive as records (``_event.Record``): the very bytes object queued for
OpenCDP plus a ULID value fixed at call time. The entry is built from them here, in this
route's thread (:meth:`CustomerIoDestination.entry`: the record's strings are read back and
its properties embedded as the JSON bytes they are, never decoded); the event ``id`` and the
``timestamp`` come from the ULID, so a resent batch carries the same ones. Devices and the
client's general path (sync mode, entries near the 32 KB limit) queue finished entry bytes.
A request body is joined from entry bytes. Answers are handled per outcome:

======================  =====================================================================
200 (and other 2xx)     every entry delivered
207                     entries named by ``errors[].batch_index`` failed (``rejected``), the
                        rest delivered; nothing is resent
413                     the unit is split in halves and each half resent; one entry that still
                        gets 413 is dropped (``too_large``)
408, 429, 5xx, network  retried with the shared :class:`RetryPolicy`, honouring Retry-After
other 4xx, 3xx          the whole unit failed, not retried (401 warned once as a credentials
                        problem; a redirect usually means the wrong region)
======================  =====================================================================
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import requests

from .._config import CustomerIoConfig
from .._errors import DeliveryError
from .._event import (
    TRACK,
    CioAddDevice,
    CioDevice,
    CioEvent,
    CioIdentifiers,
    CioIdentify,
    Item,
    OpenCdpIdentify,
    OpenCdpTrack,
    Raw,
    UlidSpeller,
    decode,
    decode_identify_record,
    decode_track_record,
    encode,
    join_raw,
    new_ulid,
)
from .._retry import RetryPolicy
from ._base import Destination, DeviceInfo, SendControl, cut_units, pace
from ._gateway import Gateway
from ._http import Answer, HttpTransport
from ._outage import Outage
from ._transport import PERMANENT_REASONS, clean_text

__all__ = ["BATCH_PATH", "MAX_BODY_BYTES", "MAX_ENTRY_BYTES", "CustomerIoDestination"]

BATCH_PATH = "/api/v2/batch"
#: Customer.io's limit on a whole batch request: every body sent stays strictly under it.
MAX_BODY_BYTES = 500_000
#: Customer.io's limit on one batch entry; a larger entry is dropped at call time.
MAX_ENTRY_BYTES = 32_000

_PREFIX = b'{"batch":['
_SUFFIX = b"]}"
#: The route cuts units so that ``sum(len(entry) + 1) <= max_unit_bytes``. A body is
#: ``len(prefix) + sum(len(entry)) + (n - 1) + len(suffix)``, hence at most
#: ``max_unit_bytes + len(prefix) + len(suffix) - 1 == MAX_BODY_BYTES - 1``.
_MAX_UNIT_BYTES = MAX_BODY_BYTES - len(_PREFIX) - len(_SUFFIX)
#: While nobody waits for a unit (:meth:`SendControl.unhurried`), its entries are built this
#: many at a time with a pause (``_pace``, :data:`~._base.PACE`) after each slice and one more
#: before the request. Building takes about 4 µs of GIL-held work per entry, so an unpaced
#: unit of 100 holds the GIL for the interpreter's whole 5 ms switch interval while the
#: application waits for it; in slices the application gets it back every ~0.1 ms (README,
#: Performance: the dual-write p99 chunk row). A flush, a shutdown or a filling queue is never
#: paced. Smaller slices measured no better.
SLICE = 20
_pace = pace

#: Platforms Customer.io knows; an OpenCDP ``web`` device has no counterpart.
_PLATFORMS = ("ios", "android")
#: A numeric ``last_active_at`` above this is taken as milliseconds (year 5138 in seconds).
_MS_THRESHOLD = 100_000_000_000
_MAX_REASON_TEXT = 300
_FIELD_INDEX = re.compile(r"^batch\[\d+\]\.?")


def _growth(entry: bytes, body: bytes) -> int:
    return len(entry) - len(body)


#: Bytes an entry has beyond the OpenCDP body it is built from (the same identifier, name and
#: properties bytes in both): an 11-digit timestamp makes it an upper bound until the year 5138.
_EMPTY = Raw(b"{}")
_TRACK_GROWTH = _growth(
    encode(CioEvent(CioIdentifiers(""), "event", "", "0" * 26, 10**10, _EMPTY)),
    encode(OpenCdpTrack("", "", _EMPTY)),
)
_IDENTIFY_GROWTH = _growth(
    encode(CioIdentify(CioIdentifiers(""), "identify", _EMPTY, 10**10)), encode(OpenCdpIdentify("", _EMPTY))
)


class CustomerIoDestination(Destination):
    """Mirrors identify/track/register_device to Customer.io's ``/api/v2/batch``.

    Units hold at most ``max_batch_size`` entries and stay under 500,000 bytes per request body.
    One unit is in flight at a time (``concurrency = 1``): entries for one person arrive in the
    order of the calls (an ``identify`` before the ``event`` that follows it), and one request
    at a time of up to ``max_batch_size`` entries keeps well within Customer.io's soft rate
    limit (100+ requests/s) while still moving thousands of events per second. Its queue is
    bounded by the client's ``max_queue_size`` / ``max_queue_bytes`` like every route's: while
    Customer.io is down, the newest calls beyond the bound are dropped (``queue_full``) and the
    oldest — already given their event ids — are kept, in order, for when it comes back.
    """

    name = "customerio"
    max_entry_bytes = MAX_ENTRY_BYTES
    max_unit_bytes = _MAX_UNIT_BYTES
    concurrency = 1
    needs_timestamp = True
    takes_records = True

    def __init__(
        self,
        config: CustomerIoConfig,
        *,
        timeout: float,
        max_batch_size: int,
        policy: RetryPolicy,
        session: Optional[requests.Session] = None,
    ) -> None:
        self.max_unit_events = max_batch_size
        self.host = config.base_url
        self.url = self.host + BATCH_PATH
        self._policy = policy
        credentials = f"{config.site_id}:{config.api_key}".encode()
        headers = {
            "Authorization": "Basic " + base64.b64encode(credentials).decode("ascii"),
            "Content-Type": "application/json",
        }
        self._http = HttpTransport(session, pool_size=1)
        self.gateway = Gateway(self._http, [self.host], headers, timeout)
        #: The destination's outage state: while it is down, one probe per backoff step.
        self.outage = Outage(policy, lease=timeout + 1.0)
        self._outage_cause: tuple[str, BaseException] = ("connection_error", DeliveryError("customerio down"))
        self._auth_warned = False
        self._spell = UlidSpeller()

    def __repr__(self) -> str:
        return f"CustomerIoDestination(url={self.url!r})"

    # ------------------------------------------------------------------------------- encoding
    def encode_identify(self, identifier: str, properties: Any, timestamp: float) -> bytes:
        """An ``identify`` entry; ``properties`` become the person's ``attributes``."""
        return encode(CioIdentify(CioIdentifiers(identifier), "identify", properties, int(timestamp)))

    def encode_track(self, identifier: str, event_name: str, properties: Any, timestamp: float) -> bytes:
        """An ``event`` entry with a ULID ``id`` fixed now, so a resent batch is idempotent."""
        return encode(
            CioEvent(
                CioIdentifiers(identifier),
                "event",
                event_name,
                new_ulid(int(timestamp * 1000)),
                int(timestamp),
                properties,
            )
        )

    def encode_device(self, identifier: str, device: DeviceInfo, timestamp: float) -> bytes:
        """An ``add_device`` entry: the platform's push token, ``last_used`` in unix seconds.

        Customer.io takes device attributes as strings only: ``os_version``, ``model`` and
        ``app_version`` become ``device_os``, ``device_model`` and ``app_version``; other
        attribute values are given as their JSON text (``true``, ``42``), nulls left out.
        """
        if device.platform == "ios":
            token = device.apn_token or device.fcm_token
        else:
            token = device.fcm_token or device.apn_token
        return encode(
            CioAddDevice(
                CioIdentifiers(identifier),
                "add_device",
                CioDevice(
                    token=token or "",
                    platform=device.platform,
                    last_used=_unix_seconds(device.last_active_at, timestamp),
                    attributes=_device_attributes(device),
                ),
            )
        )

    def record_limit(self, kind: int) -> int:
        """The longest OpenCDP body of ``kind`` whose entry is surely at most 32,000 bytes."""
        return MAX_ENTRY_BYTES - (_TRACK_GROWTH if kind == TRACK else _IDENTIFY_GROWTH)

    def entry(self, item: Item) -> bytes:
        """The entry bytes of a queued item: as queued, or built from a record (track: an
        ``event`` with the record's ULID as ``id``; identify: the person's ``attributes``;
        both with the ULID's time in seconds as ``timestamp``)."""
        if len(item) == 2:
            return item[1]
        kind, body, ulid = item
        event_id, seconds = self._spell(ulid)
        if kind == TRACK:
            call = decode_track_record(body)
            return encode(
                CioEvent(
                    CioIdentifiers(call.identifier),
                    "event",
                    call.eventName,
                    event_id,
                    seconds,
                    call.properties,
                )
            )
        person = decode_identify_record(body)
        return encode(CioIdentify(CioIdentifiers(person.identifier), "identify", person.properties, seconds))

    def device_rejection(self, device: DeviceInfo) -> Optional[str]:
        """``unsupported_platform`` for a platform Customer.io has no devices for (``web``)."""
        return None if device.platform in _PLATFORMS else "unsupported_platform"

    def describe(self, item: Item) -> tuple[Optional[str], Optional[str], Mapping[str, Any]]:
        """``(identifier, event name, attributes)`` of a queued entry (device attributes for devices)."""
        data = decode(self.entry(item))
        ids = data.get("identifiers")
        identifier = ids.get("id") if isinstance(ids, dict) else None
        action = data.get("action")
        if action == "add_device":
            device = data.get("device")
            props = device.get("attributes") if isinstance(device, dict) else None
        else:
            props = data.get("attributes")
        name = data.get("name") if action == "event" else None
        return identifier, name, props if isinstance(props, dict) else {}

    # -------------------------------------------------------------------------------- sending
    def send(self, items: Sequence[Item], ctl: SendControl) -> None:
        """POST the unit as one or more batches (more after a 413); resolve every item once."""
        started = time.monotonic()
        entry = self.entry
        step = SLICE if ctl.unhurried() else max(len(items), 1)  # one slice when someone waits
        try:
            pairs = []
            for at in range(0, len(items), step):
                if at:
                    _pace()
                pairs.extend([(item, entry(item)) for item in items[at : at + step]])
        except Exception:  # a record that cannot be read back (never expected): fail it alone
            pairs = []
            for item in items:
                try:
                    pairs.append((item, entry(item)))
                except Exception as exc:
                    ctl.warn(
                        "internal", f"customerio: unexpected {type(exc).__name__} while building an entry"
                    )
                    ctl.failed([item], "internal_error", DeliveryError(f"customerio: {type(exc).__name__}"))
        if ctl.unhurried():
            _pace()
        todo = cut_units(pairs, self.max_unit_events, _MAX_UNIT_BYTES)
        todo.reverse()
        while todo:
            chunk = todo.pop()
            try:
                halves = self._send_batch(chunk, ctl, started)
            except Exception as exc:  # resolution is each path's last step: chunk is unresolved
                ctl.warn("internal", f"customerio: unexpected {type(exc).__name__} while sending")
                ctl.failed(
                    [item for item, _ in chunk],
                    "internal_error",
                    DeliveryError(f"customerio: {type(exc).__name__}"),
                )
                continue
            if halves:
                todo.extend(reversed(halves))

    def _send_batch(
        self, pairs: list[tuple[Item, bytes]], ctl: SendControl, started: float
    ) -> Optional[list[list[tuple[Item, bytes]]]]:
        """Send one batch of (item, entry) pairs with retries; returns the halves to send
        instead after a 413."""
        body = join_raw(_PREFIX, [entry for _, entry in pairs], _SUFFIX)
        chunk = [item for item, _ in pairs]
        policy = self._policy
        delays = policy.delays()
        attempts = 0
        posted = False
        outage = self.outage
        while True:
            wait = outage.admit()
            if wait > 0 and (posted or time.monotonic() - started + wait <= policy.max_time):
                # Customer.io is known to be down: wait for its next probe, no attempt spent (a
                # batch never sent whose budget ends before that probe is sent once, now).
                if (time.monotonic() - started) + wait > policy.max_time or not ctl.sleep(wait):
                    ctl.failed(chunk, *self._outage_cause)
                    return None
                continue
            posted = True
            sent_at = outage.now()
            answer, error, reason = self._post(body, ctl.remaining())
            if answer is not None and (answer.ok or not policy.is_retryable_status(answer.status)):
                outage.succeeded(sent_at)  # it answered: up (the request may still be at fault)
            if answer is not None:
                if answer.ok:
                    if answer.status == 207:
                        self._partial(chunk, answer, ctl)
                    else:
                        ctl.delivered(chunk)
                    return None
                if answer.status == 413:
                    if len(pairs) > 1:
                        mid = len(pairs) // 2
                        return [pairs[:mid], pairs[mid:]]
                    ctl.dropped(chunk, "too_large", error)
                    return None
                if answer.status == 401 and not self._auth_warned:
                    self._auth_warned = True
                    ctl.warn(
                        "credentials",
                        f"customerio: {self.host} answered 401 Unauthorized: check customer_io "
                        "site_id and api_key (Track API credentials, not an App API key)",
                    )
            if (
                reason == "deadline"
                or reason in PERMANENT_REASONS
                or (answer is not None and not policy.is_retryable_status(answer.status))
            ):
                ctl.failed(chunk, reason, error)
                return None
            retry_after = answer.retry_after if answer is not None else None
            self._outage_cause = (reason, error)
            if not outage.failed(retry_after):  # not part of a known outage: an attempt spent
                attempts += 1
            delay = outage.wait_time() if outage.down else policy.next_delay(delays, retry_after)
            if not policy.may_retry(attempts, started, time.monotonic(), delay) or not ctl.sleep(delay):
                ctl.failed(chunk, reason, error)
                return None
            ctl.retried(len(chunk))

    def _post(self, body: bytes, remaining: Optional[float]) -> tuple[Optional[Answer], DeliveryError, str]:
        """One attempt: the answer (with the error it would mean), or the error and reason."""
        for t in self.gateway.tries("POST", BATCH_PATH, body, remaining=remaining):
            if t.expired:
                return None, DeliveryError("deadline passed before the request could be sent"), "deadline"
            if t.error is not None:
                return (
                    None,
                    DeliveryError(f"{BATCH_PATH} to {self.host}: {t.error}", host=self.host),
                    t.error.reason,
                )
            answer = t.answer
            assert answer is not None
            text = answer.error_text() if not answer.ok else ""
            hint = ""
            if 300 <= answer.status < 400:
                hint = " (redirected: is the region right? EU accounts need region='eu')"
            error = DeliveryError(
                f"{BATCH_PATH} to {self.host}: HTTP {answer.status}" + (f": {text}" if text else "") + hint,
                status_code=answer.status,
                host=self.host,
                server_message=text or None,
            )
            return answer, error, f"http_{answer.status}"
        raise AssertionError("a gateway of one host tries it")  # pragma: no cover

    def _partial(self, chunk: list[Item], answer: Answer, ctl: SendControl) -> None:
        """207: fail the entries Customer.io names, deliver the rest (they were accepted)."""
        rejected = _rejected_entries(answer.content, len(chunk))
        if not rejected:
            ctl.warn(
                "207",
                "customerio: 207 answer without usable errors[].batch_index; the batch is counted as delivered",
            )
        groups: dict[str, list[Item]] = {}
        for index in sorted(rejected):
            groups.setdefault(rejected[index], []).append(chunk[index])
        accepted = [item for index, item in enumerate(chunk) if index not in rejected]
        for text, group in groups.items():
            ctl.failed(
                group,
                "rejected",
                DeliveryError(
                    f"Customer.io rejected {len(group)} batch entr{'y' if len(group) == 1 else 'ies'}: {text}",
                    status_code=207,
                    host=self.host,
                    server_message=text,
                ),
            )
        ctl.delivered(accepted)

    def after_fork(self) -> None:
        """Drop the parent's connections (and its view of an outage) in a forked child."""
        self._http.after_fork()
        self.outage.after_fork()

    def close(self) -> None:
        """Close the library's own Session (a user's Session is left open)."""
        self._http.close()


# ---------------------------------------------------------------------------------- helpers
def _rejected_entries(content: bytes, count: int) -> dict[int, str]:
    """``batch_index -> reason text`` from a 207 body; unusable errors are skipped."""
    try:
        data = decode(content)
    except Exception:
        return {}
    errors = data.get("errors") if isinstance(data, dict) else None
    rejected: dict[int, str] = {}
    if not isinstance(errors, list):
        return rejected
    for error in errors:
        if not isinstance(error, dict):
            continue
        index = error.get("batch_index")
        if type(index) is not int or not 0 <= index < count or index in rejected:
            continue
        parts = [str(error[k]) for k in ("reason", "message") if error.get(k)]
        if parts[1:] and parts[0] == parts[1]:
            parts.pop()
        field = _FIELD_INDEX.sub("", str(error.get("field") or ""))
        text = ": ".join(parts) or "rejected"
        if field:
            text += f" (field {field})"
        rejected[index] = clean_text(text, _MAX_REASON_TEXT)
    return rejected


def _unix_seconds(value: Any, default: float) -> int:
    """``last_active_at`` (seconds, milliseconds, ISO-8601 text, datetime) as unix seconds."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                value = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return int(default)
    if isinstance(value, _dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=_dt.timezone.utc)
        return int(aware.timestamp())
    if isinstance(value, _dt.date):
        return int(_dt.datetime(value.year, value.month, value.day, tzinfo=_dt.timezone.utc).timestamp())
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        seconds = value / 1000 if value > _MS_THRESHOLD else value
        return int(seconds) if seconds > 0 else int(default)
    return int(default)


def _device_attributes(device: DeviceInfo) -> Optional[dict[str, str]]:
    """Device attributes as Customer.io takes them: string values only."""
    attrs: dict[str, str] = {}
    given: Any = device.attributes
    if given is not None:
        values = given if isinstance(given, Mapping) else decode(given)
        for key, value in values.items():
            text = _as_text(value)
            if text is not None:
                attrs[str(key)] = text
    for key, value in (
        ("device_os", device.os_version),
        ("device_model", device.model),
        ("app_version", device.app_version),
    ):
        if value is not None:
            attrs[key] = value
    return attrs or None


def _as_text(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return encode(value).decode("utf-8")
