"""Every schema is written once: these tests fail when a second copy drifts from the first."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

from cdp_batcher import CDPClient, ClientConfig
from cdp_batcher._config import OPTIONS
from cdp_batcher._event import DEVICE_FIELDS, DEVICE_STRING_FIELDS, DeviceInfo
from cdp_batcher._import import row_call

README = Path(__file__).resolve().parents[1] / "README.md"


def _defaults() -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(ClientConfig) if f.name in OPTIONS}


def test_client_signature_is_the_config_options_with_their_defaults() -> None:
    """CDPClient's keyword arguments are OPTIONS, in order, and each default is ClientConfig's."""
    params = [p for p in inspect.signature(CDPClient.__init__).parameters.values() if p.name != "self"]
    assert tuple(p.name for p in params) == OPTIONS
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    defaults = _defaults()
    for p in params:
        if p.name == "cdp_api_key":
            assert p.default is inspect.Parameter.empty
        elif p.name in ("cdp_endpoint", "cdp_fallback_endpoints"):
            assert p.default is None
        else:
            assert p.default == defaults[p.name], p.name


def test_from_kwargs_fills_every_default_from_the_dataclass() -> None:
    """A config built from the key alone holds every field's default."""
    cfg = ClientConfig.from_kwargs(cdp_api_key="k")
    for name, default in _defaults().items():
        if name != "cdp_api_key":
            assert getattr(cfg, name) == default, name


def test_readme_table_lists_every_option_with_its_default() -> None:
    """The README's configuration table names OPTIONS in order, with the dataclass defaults."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    rows = re.findall(r"^\| `(\w+)` \| `?([^|`]+)`?[^|]* \|", section, re.M)
    assert [name for name, _ in rows] == list(OPTIONS)
    defaults = _defaults()
    checked = 0
    for name, shown in rows:
        default = defaults.get(name, "")
        if default is None or isinstance(default, (bool, int, float)):
            assert shown.strip() == repr(default), (name, shown)
            checked += 1
    assert checked == len(OPTIONS) - 3  # all but the key and the two endpoint options


def test_device_fields_are_register_devices_keywords_and_the_importers_columns() -> None:
    """DeviceInfo's fields are register_device()'s keywords (after the identifier) and what a
    device row of the importer may carry."""
    params = list(inspect.signature(CDPClient.register_device).parameters)[2:]
    assert tuple(params) == DEVICE_FIELDS == DeviceInfo.__struct_fields__[1:]
    assert set(DEVICE_STRING_FIELDS) < set(DEVICE_FIELDS)
    row = {"type": "register_device", "identifier": "u1", **{name: "x" for name in DEVICE_FIELDS}}
    method, args, kwargs = row_call(row)
    assert method == "register_device" and args == ("u1",) and tuple(kwargs) == DEVICE_FIELDS
