"""Transactional messages: one email, one push and one SMS, sent synchronously.

    python examples/transactional.py                                   # starts its own local collector
    CDP_API_KEY=... CDP_ENDPOINT=http://127.0.0.1:PORT python examples/transactional.py

`make demo` sets CDP_ENDPOINT to the local collector. Without CDP_ENDPOINT the example starts a
collector of its own (cdp_batcher.testing) rather than sending real messages to the gateway.
"""

from __future__ import annotations

import contextlib
import os
import sys

from cdp_batcher import CDPClient, DeliveryError, SendPushRequest
from cdp_batcher.testing import Collector

from _common import client_settings


def send_all(client: CDPClient) -> int:
    # Template email; `from_` is the Python name of the wire field `from`.
    email = client.send_email(
        identifiers={"id": "user-42"},
        to="ada@example.com",
        transactional_message_id="WELCOME",
        message_data={"name": "Ada", "plan": "pro"},
    )
    print(f"email: ok={bool(email)} host={email.host} delivery_id={email.get('delivery_id')}")

    # Push to the person's registered devices; a typed request object works too.
    push = client.send_push(
        SendPushRequest(
            identifiers={"id": "user-42"},
            transactional_message_id="ORDER_SHIPPED",
            title="Your order has shipped",
            message_data={"order": "A-1001"},
        )
    )
    print(f"push: ok={bool(push)} delivery_id={push.get('delivery_id')}")

    # Raw SMS (no template): body is required, phone numbers in E.164 form.
    sms = client.send_sms(identifiers={"id": "user-42"}, to="+15550001111", body="Your code is 123456")
    print(f"sms: ok={bool(sms)} delivery_id={sms.get('delivery_id')}")
    return 0 if email and push and sms else 1


def main() -> int:
    with contextlib.ExitStack() as stack:
        if not os.environ.get("CDP_ENDPOINT"):
            collector = stack.enter_context(Collector(api_key="demo-key", printer=print))
            os.environ.update(CDP_ENDPOINT=collector.url, CDP_API_KEY="demo-key", CDP_FALLBACK_ENDPOINTS="")
        # fail_on_exception=True: a failed send raises DeliveryError (status, host, server message).
        client = stack.enter_context(CDPClient(**client_settings(), fail_on_exception=True))
        try:
            return send_all(client)
        except DeliveryError as exc:
            print(
                f"transactional: not delivered: HTTP {exc.status_code} from {exc.host}: {exc.server_message}"
            )
            return 1


if __name__ == "__main__":
    sys.exit(main())
