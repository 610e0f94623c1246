#!/usr/bin/env bash
# Schemathesis against the live platform, driven by tests/schemathesis.rs.
#
#   bash .ci/schemathesis.sh                        # short form: 30 examples per operation
#   SMS_FUZZ_EXAMPLES=500 bash .ci/schemathesis.sh  # long form
#   SMS_SCHEMATHESIS_SEED=123 bash .ci/schemathesis.sh   # reproduce a run
#
# Installs schemathesis (pinned) into a cached venv when it is missing, checks
# the OpenAPI documents (sms-http-hyper/openapi/*.yaml) as YAML and as OpenAPI 3.0, then runs
# the test, which starts the platform in-process and runs the schemathesis CLI
# against each served document. Fails on any 5xx, dropped connection or
# answer that does not conform to its document.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5          # needs Python >= 3.11
SPEC_VALIDATOR_VERSION=0.9.0
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/sms-schemathesis-venv"
PYTHON="${PYTHON:-python3}"

installed_version() {
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true
}

if [ ! -x "$VENV/bin/schemathesis" ] || [ "$(installed_version)" != "$SCHEMATHESIS_VERSION" ]; then
    echo "== installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
        echo "schemathesis $SCHEMATHESIS_VERSION needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1))" >&2
        exit 1
    fi
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION" \
        "openapi-spec-validator==$SPEC_VALIDATOR_VERSION"
fi
"$VENV/bin/schemathesis" --version

echo "== openapi documents"
"$VENV/bin/python" - <<'PY'
import sys
import yaml
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

ok = True
for dialect in ["hub", "telsignup", "account_v4", "pool", "sendapi"]:
    path = f"sms-http-hyper/openapi/{dialect}.yaml"
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    if not str(doc.get("openapi", "")).startswith("3.0"):
        print(f"{path}: not OpenAPI 3.0", file=sys.stderr)
        ok = False
        continue
    spec, _ = read_from_filename(path)
    try:
        validate(spec)
    except Exception as e:  # noqa: BLE001 - report every document
        print(f"{path}: invalid OpenAPI: {e}", file=sys.stderr)
        ok = False
        continue
    ops = sum(1 for item in doc["paths"].values() for m in item if m in ("get", "post", "put", "delete", "patch"))
    print(f"{path}: OpenAPI {doc['openapi']}, {len(doc['paths'])} paths, {ops} operations")
sys.exit(0 if ok else 1)
PY

echo "== schemathesis against the live platform"
export SMS_SCHEMATHESIS="$VENV/bin/schemathesis"
export SMS_FUZZ_EXAMPLES="${SMS_FUZZ_EXAMPLES:-30}"
cargo test --test schemathesis -- --include-ignored --nocapture --test-threads=1
