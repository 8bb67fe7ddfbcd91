"""Property-based tests of the HTTP API against its own OpenAPI document (schemathesis)."""

from __future__ import annotations

import atexit
import shutil
import tempfile

import hypothesis
import schemathesis
from schemathesis.specs.openapi.checks import negative_data_rejection

from memcollect.server import create_app

# The app builds its collector on first use. It spools, as a server does by default: what
# the server accepts must also be what its spool can write (a 64-bit overflow once was not).
_data_dir = tempfile.mkdtemp(prefix="memcollect-schema-")
atexit.register(shutil.rmtree, _data_dir, ignore_errors=True)
app = create_app(
    token="", max_batch=50, backend="memory://", data_dir=_data_dir, batch_timeout=0.005
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@hypothesis.settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,  # the same examples every run: a failure here is reproducible
)
def test_api_conforms_to_its_openapi(case: schemathesis.Case) -> None:
    # Every response: no 5xx, a documented status and content type, a body matching its schema.
    # A query string carries only text: a "negative" case that turns a parameter into an object
    # or a null reaches the server as a valid string, so that check is for bodies only.
    excluded = [negative_data_rejection] if case.method == "GET" else []
    case.call_and_validate(excluded_checks=excluded)
