"""Valid transactional request fields for tests, each overridable by keyword."""

from __future__ import annotations

from typing import Any


def raw_email(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "identifiers": {"id": "user_1"},
        "to": "ann@example.com",
        "from_": "shop@example.com",
        "subject": "Hi",
        "body": "<p>Hi</p>",
    }
    fields.update(overrides)
    return fields


def template_email(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "identifiers": {"id": "user_1"},
        "to": "ann@example.com",
        "transactional_message_id": "WELCOME",
    }
    fields.update(overrides)
    return fields


def push(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"identifiers": {"id": "user_1"}, "transactional_message_id": "PUSH_1"}
    fields.update(overrides)
    return fields


def sms(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"identifiers": {"id": "user_1"}, "to": "+2348012345678", "body": "Code: 1234"}
    fields.update(overrides)
    return fields
