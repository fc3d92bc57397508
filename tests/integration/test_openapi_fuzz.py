"""Every operation of the served OpenAPI document, fuzzed by schemathesis: no request makes a 5xx.

The document is the one a client downloads (``/openapi.json`` of the running server); requests go
over HTTP with an admin token, so every route runs past authentication. Each operation gets a
bounded number of generated requests, valid ones (by the schema) and invalid ones, in a fixed
order (``derandomize``), so a run is repeatable and takes about twenty seconds per backend pair.
The server has a DICOM client, as under ``pacs serve``, so the node routes answer as they would
there.
"""

from __future__ import annotations

from pathlib import Path

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from pacs.context import CallerContext
from tests.support.factories import diconde_dx, write
from tests.support.web import RunningWeb

EXAMPLES = {"GET": 8, "POST": 7, "PUT": 7, "DELETE": 4}
# Routes whose requests go out to a DICOM node: a generated host name would make each example wait
# for a DNS lookup or a connection timeout; test_rest.py covers them against a real node.
SLOW = {("POST", "/api/nodes/{ae_title}/echo"), ("POST", "/api/nodes/{ae_title}/send")}


@pytest.fixture
def served(web: RunningWeb, tmp_path: Path) -> RunningWeb:
    from dicom_nodes.peers import ScuPeers

    web.archive.peers = ScuPeers(web.archive)
    ds = diconde_dx(part_id="FUZZ-1", rows=32, columns=32)
    web.archive.ingest.ingest_file(write(ds, tmp_path / "fuzz.dcm"), CallerContext(via="import"))
    return web


def test_no_generated_request_gets_a_server_error(served: RunningWeb) -> None:
    schema = schemathesis.openapi.from_url(f"{served.base_url}/openapi.json")
    headers = served.headers("admin")
    failures: list[str] = []
    session = requests.Session()  # one keep-alive connection for every request
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(operations) >= 10  # the REST and DICOMweb routes are all in the document
    for operation in operations:
        method = operation.method.upper()
        if (method, operation.path) in SLOW:
            continue

        @hypothesis.settings(
            max_examples=EXAMPLES.get(method, 6),
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @given(
            case=operation.as_strategy(GenerationMode.POSITIVE)
            | operation.as_strategy(GenerationMode.NEGATIVE)
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=served.base_url, session=session, headers=headers, timeout=30)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} query={case.query} -> {response.status_code}: "
                    f"{response.text[:300]}"
                )

        check()
    assert not failures, "\n".join(failures)
