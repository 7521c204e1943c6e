"""`fleetline status` shows outputs as they work locally: an output built on a resource the
emulator skips (the HTTP API) is the URL of the local process that serves it."""

from __future__ import annotations

from pathlib import Path

from shared.cloudformation import load_template
from shared.local._status import working_outputs

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "template.yaml"


def test_the_api_url_output_is_the_local_api() -> None:
    template = load_template(TEMPLATE)
    unresolved = "https://${OrdersApi}.execute-api.us-east-1.amazonaws.com"
    shown = working_outputs(template, {"OrdersApiUrl": unresolved, "OrdersTable": "t"},
                            {"OrdersApi": "http://127.0.0.1:8000", "Dashboard": "http://x"})
    assert shown == {"OrdersApiUrl": "http://127.0.0.1:8000", "OrdersTable": "t"}
    # without the local process the output stays as the stack has it
    assert working_outputs(template, {"OrdersApiUrl": unresolved}, {}) == {
        "OrdersApiUrl": unresolved}
