"""Our own schemathesis checks, loaded by scripts/fuzz through SCHEMATHESIS_HOOKS.

`error_envelope`: every non-2xx answer is the error envelope of docs/API.md,
`{"error": {"code": <string>, "message": <string>, "order_id"?: <integer>}}` as JSON, and its
`code` is one that docs/API.md's Errors table lists for that status. The OpenAPI document
constrains `code` to the `ErrorCode` enum (response_schema_conformance checks that); this
checks the human contract too, and checks the status and code belong together, which the
document cannot say.

`tally`: counts what the run sent and got (operations, responses, statuses) and writes it as
JSON to $FUZZ_TALLY for scripts/fuzz's summary. It never fails.
"""

import json
import os
import re
import threading
from collections import Counter
from pathlib import Path

import schemathesis

API_MD = Path(os.environ.get("FUZZ_API_MD", Path(__file__).resolve().parent.parent / "docs/API.md"))


def documented_codes(text):
    """{status: {code, ...}} from the `| status | codes |` table under `## Errors`."""
    section = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    codes = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d{3})\s*\|(.*)\|\s*$", line)
        if m:
            # Backticked snake_case words are codes; `Idempotency-Key` and `Retry-After` are not.
            codes[int(m.group(1))] = set(re.findall(r"`([a-z][a-z_]*)`", m.group(2)))
    if not codes:
        raise RuntimeError(f"no Errors table found in {API_MD}")
    return codes


CODES = documented_codes(API_MD.read_text(encoding="utf-8"))


@schemathesis.check
def error_envelope(ctx, response, case):
    status = response.status_code
    if 200 <= status < 300:
        return None
    where = f"{response.request.method} {response.request.path_url} answered {status}"
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise AssertionError(f"{where} with Content-Type {content_type!r}, not application/json")
    try:
        body = json.loads(response.content)
    except ValueError as e:
        raise AssertionError(f"{where} with a body that is not JSON: {e}") from None
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        raise AssertionError(f'{where} with a body that is not {{"error": {{...}}}}: {body!r}')
    error = body["error"]
    if not isinstance(error.get("code"), str) or not isinstance(error.get("message"), str):
        raise AssertionError(f"{where}: error.code and error.message must be strings: {body!r}")
    extra = set(error) - {"code", "message", "order_id"}
    if extra:
        raise AssertionError(f"{where}: undocumented error fields {sorted(extra)}: {body!r}")
    if "order_id" in error and (
        not isinstance(error["order_id"], int) or isinstance(error["order_id"], bool) or status != 409
    ):
        raise AssertionError(f"{where}: order_id belongs to a 409 and is an integer: {body!r}")
    allowed = CODES.get(status)
    if allowed is None:
        raise AssertionError(f"{where}: docs/API.md's Errors table has no status {status}")
    if error["code"] not in allowed:
        raise AssertionError(
            f"{where} with code {error['code']!r}; docs/API.md lists for {status}: "
            + ", ".join(sorted(allowed))
        )
    return None


@schemathesis.check
class tally:  # noqa: N801 - the check's name as shown by schemathesis
    """Counts responses by status and operation; writes them to $FUZZ_TALLY after the run."""

    def __init__(self):
        self.lock = threading.Lock()
        self.statuses = Counter()
        self.operations = Counter()

    def after_response(self, ctx, response, case):
        with self.lock:
            self.statuses[response.status_code] += 1
            self.operations[case.operation.label] += 1

    def after_run(self, ctx):
        path = os.environ.get("FUZZ_TALLY")
        if not path:
            return
        with self.lock, open(path, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                    "operations": dict(sorted(self.operations.items())),
                },
                f,
            )
