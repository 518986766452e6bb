#!/usr/bin/env bash
# Autobahn|Testsuite conformance run: the suite's fuzzing client
# (`wstest -m fuzzingclient`) against jwtchat's /ws in echo mode.
#
#   scripts/autobahn.sh          CI selection: cases 1.* to 7.*, debug build
#   scripts/autobahn.sh --full   every case but 12.* and 13.* (permessage-deflate,
#                                which jwtchat does not negotiate), release build
#
# Needs: python3, cargo, CPython 2.7.18 under pyenv, and PyPI. The suite is
# Python-2-only; it is installed once into .venv-autobahn/ (git-ignored) and
# reused while it still works. Reports go to reports/autobahn/ (HTML and JSON).
# The last line printed is always `autobahn: N passed, M failed`; the exit
# status is non-zero if M > 0 or anything else went wrong.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,13s/^# \{0,1\}//p' "$0"; }

MODE=ci
case "${1:-}" in
    "") ;;
    --full) MODE=full ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
esac

# --- the two selections ----------------------------------------------------
# The expected totals are what the suite (25.10.1) selects for these patterns,
# hard-coded because wstest exits 0 with a partial report when the server dies
# mid-run: cases missing from the report count as failed, so we must know how
# many there should be. They are checked against the suite's own case list
# before the run, so an upgrade of the suite cannot silently change them.
if [[ $MODE == full ]]; then
    CASES='["*"]'
    EXCLUDE='["12.*", "13.*"]'
    EXPECTED=301
    PROFILE=release
    TIMEOUT=900 # seconds; a passing run takes well under a minute
else
    CASES='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*"]'
    EXCLUDE='[]'
    EXPECTED=246
    PROFILE=debug
    TIMEOUT=600
fi

REPORTS=$ROOT/reports
OUTDIR=$REPORTS/autobahn
SPEC=$REPORTS/autobahn-spec.json
SERVER_LOG=$REPORTS/autobahn-server.log
VENV=$ROOT/.venv-autobahn
REQUIREMENTS=$ROOT/scripts/autobahn-requirements-py27.txt
PYENV_ROOT=${PYENV_ROOT:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")}
PY27=$PYENV_ROOT/versions/2.7.18/bin/python

SERVER_PID=
STARTED=$SECONDS
# The summary line, printed last by cleanup. Until scoring sets it, a run that
# stops early (a failed setup or build) counts every case as failed.
SUMMARY=

log() { echo "autobahn.sh: $*" >&2; }

# However the script ends: stop the server; on failure show the end of its
# log; print the summary as the very last line.
cleanup() {
    local status=$?
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -s $SERVER_LOG ]]; then
        echo "--- last lines of $SERVER_LOG ---" >&2
        tail -n 30 "$SERVER_LOG" >&2
    fi
    if [[ ! $SUMMARY =~ ^autobahn:\ [0-9]+\ passed,\ [0-9]+\ failed$ ]]; then
        SUMMARY="autobahn: 0 passed, $EXPECTED failed"
        [[ $status -ne 0 ]] || status=1
    fi
    echo "$SUMMARY"
    exit "$status"
}
trap cleanup EXIT

# --- 1. the Python 2.7 environment with wstest -----------------------------
# Reused when wstest runs and it was built from the current requirements file
# (its hash is stamped in last, so a half-finished install is never reused).
setup_venv() {
    local stamp=$VENV/py27/.requirements.sha256
    local want
    want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]] &&
        "$VENV/py27/bin/wstest" --help >/dev/null 2>&1; then
        return
    fi
    if [[ ! -x $PY27 ]]; then
        log "no CPython 2.7.18 at $PY27 (install it with: pyenv install 2.7.18)"
        exit 1
    fi
    log "installing Autobahn|Testsuite into $VENV (about 75 s)"
    local started=$SECONDS
    rm -rf "$VENV"
    # virtualenv 20.21.1 is the last release that can create Python 2.7
    # environments; it runs on Python 3, so it lives in a small venv of its own
    # rather than in the user's site-packages.
    python3 -m venv "$VENV/bootstrap"
    "$VENV/bootstrap/bin/python" -m pip install --quiet 'virtualenv==20.21.1'
    # --no-periodic-update: seed pip/setuptools from virtualenv's embedded
    # wheels, never from the network behind our back.
    "$VENV/bootstrap/bin/python" -m virtualenv --quiet --no-periodic-update \
        -p "$PY27" "$VENV/py27"
    # The suite's sdist lacks the requirements file its setup.py reads, so
    # `pip install autobahntestsuite` alone gets no dependencies: install the
    # hand-pinned closure instead.
    "$VENV/py27/bin/python" -m pip install --quiet --no-python-version-warning \
        --no-warn-script-location -r "$REQUIREMENTS"
    "$VENV/py27/bin/wstest" --help >/dev/null
    echo "$want" >"$stamp"
    log "setup took $((SECONDS - started)) s"
}

# --- 2. the selection must match the expected total -------------------------
# wstest hangs forever when no case is selected, and we need the total to
# count missing cases; so ask the suite's own case list what the spec selects.
check_selection() {
    local selected
    selected=$("$VENV/py27/bin/python" - "{\"cases\": $CASES, \"exclude-cases\": $EXCLUDE}" <<'EOF'
import json, sys
from autobahntestsuite.case import (Cases, CaseCategories, CaseSubCategories,
                                   CaseSetname, CaseBasename)
from autobahntestsuite.caseset import CaseSet
spec = json.loads(sys.argv[1])
# Exactly what wstest's FuzzingClientFactory does with the spec.
cs = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)
print(len(cs.parseSpecCases(spec)))
EOF
)
    if [[ $selected -eq 0 ]]; then
        log "the spec selects no case (wstest would hang)"
        exit 1
    fi
    if [[ $selected -ne $EXPECTED ]]; then
        log "the spec selects $selected cases, this script expects $EXPECTED: update EXPECTED"
        exit 1
    fi
}

# --- 3. the server -----------------------------------------------------------
start_server() {
    local cargo_flags=() bin
    [[ $PROFILE == release ]] && cargo_flags=(--release)
    log "cargo build ${cargo_flags[*]}"
    cargo build --quiet "${cargo_flags[@]}" --bin jwtchat
    bin=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/jwtchat

    # --echo: each message goes back to its sender, which is what the suite
    # expects of a server. Limits are lifted so they do not fail cases that are
    # about the protocol: frames up to 16 MiB (case 9.x sends messages of that
    # size; the frame limit is 2N + 1024), no per-connection message rate, and
    # a token that outlives the run.
    # No --allowed-origin: wstest sends no Origin header (autobahn only adds
    # one when the spec gives a server an "origin"), so the check that a
    # browser's Origin matches Host does not apply.
    # Port 0, then the port from the log line: no race for a free port.
    "$bin" --bind 127.0.0.1:0 --echo --max-message-bytes 16777216 \
        --message-rate 0 --token-ttl 3600 >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    PORT=
    for _ in $(seq 100); do
        PORT=$(sed -n 's#.*listening on http://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$SERVER_LOG" | head -n 1)
        [[ -n $PORT ]] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "the server exited at start-up"
            exit 1
        fi
        sleep 0.1
    done
    if [[ -z $PORT ]]; then
        log "the server did not report its port within 10 s"
        exit 1
    fi
}

# A token for a demo user. The suite cannot send headers, so it goes in the
# URL's ?token=.
get_token() {
    python3 - "$PORT" <<'EOF'
import json, sys, urllib.request
req = urllib.request.Request(
    "http://127.0.0.1:%s/auth" % sys.argv[1],
    data=json.dumps({"username": "userA", "password": "passwordA"}).encode(),
    headers={"Content-Type": "application/json"},
)
with urllib.request.urlopen(req, timeout=10) as resp:
    print(json.load(resp)["token"])
EOF
}

# --- 4. scoring ---------------------------------------------------------------
# index.json: {"jwtchat": {"1.1.1": {"behavior": "OK", "behaviorClose": "OK",
# "reportfile": ...}}}. Pass/fail follows the suite's own report (fuzzing.py,
# createMasterReport): the behaviors OK, NON-STRICT and INFORMATIONAL are not
# failures (anything else, UNIMPLEMENTED included, is); of the closing
# behaviors only FAILED and UNCLEAN are shown as failures (WRONG CODE is
# "non-strict", FAILED BY CLIENT "almost"). Cases missing from the report
# (the server died, wstest was killed) count as failed. Prints the summary
# line last and exits 1 on any failure.
score() {
    python3 - "$OUTDIR" "$EXPECTED" <<'EOF'
import json, os, re, sys

outdir, expected = sys.argv[1], int(sys.argv[2])
index = os.path.join(outdir, "index.json")
results = json.load(open(index)).get("jwtchat", {}) if os.path.exists(index) else {}

PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")
CLOSE_FAILING = ("FAILED", "UNCLEAN")

def case_key(case_id):
    return [int(n) for n in re.findall(r"\d+", case_id)]

def reasons(r):
    """The case's own explanation, from its JSON report."""
    try:
        with open(os.path.join(outdir, r["reportfile"])) as f:
            case = json.load(f)
        return case.get("result", ""), case.get("resultClose", "")
    except (KeyError, OSError, ValueError):
        return "", ""

counts = dict.fromkeys(("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"), 0)
close_counts = {}
passed = failed = 0
for case_id in sorted(results, key=case_key):
    r = results[case_id]
    behavior, close = r.get("behavior"), r.get("behaviorClose")
    counts[behavior] = counts.get(behavior, 0) + 1
    close_counts[close] = close_counts.get(close, 0) + 1
    ok = behavior in PASSING and close not in CLOSE_FAILING
    passed += ok
    failed += not ok
    if behavior != "OK" or close != "OK":
        result, result_close = reasons(r)
        print("%s %-8s behavior %s, close %s (code %s)" % (
            "  " if ok else "X ", case_id, behavior, close, r.get("remoteCloseCode")))
        if behavior != "OK":
            print("             %s" % result)
        if close != "OK":
            print("             %s" % result_close)

missing = max(expected - len(results), 0)
failed += missing
print("behaviors: " + ", ".join("%s %d" % kv for kv in counts.items()))
print("closing behaviors: " + ", ".join("%s %d" % kv for kv in sorted(close_counts.items())))
print("cases: %d expected, %d reported, %d missing" % (expected, len(results), missing))
print("autobahn: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
EOF
}

# --- main ---------------------------------------------------------------------
mkdir -p "$REPORTS"
rm -rf "$OUTDIR" "$SERVER_LOG"
setup_venv
check_selection
start_server
TOKEN=$(get_token)

cat >"$SPEC" <<EOF
{
  "outdir": "$OUTDIR",
  "servers": [{"agent": "jwtchat", "url": "ws://127.0.0.1:$PORT/ws?token=$TOKEN"}],
  "cases": $CASES,
  "exclude-cases": $EXCLUDE,
  "exclude-agent-cases": {}
}
EOF

log "running $EXPECTED cases against ws://127.0.0.1:$PORT/ws ($PROFILE build)"
run_started=$SECONDS
# wstest writes a line per case; keep it in a log, not on the console. It can
# hang (a case waiting on a dead connection), hence the timeout.
wstest_status=0
timeout --kill-after=10 "$TIMEOUT" \
    "$VENV/py27/bin/wstest" -m fuzzingclient -s "$SPEC" \
    >"$REPORTS/autobahn-wstest.log" 2>&1 || wstest_status=$?
log "wstest finished in $((SECONDS - run_started)) s (status $wstest_status; total $((SECONDS - STARTED)) s)"
if [[ $wstest_status -ne 0 ]]; then
    log "wstest failed (124 = timed out); its log's last lines:"
    tail -n 20 "$REPORTS/autobahn-wstest.log" >&2
fi
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server died during the run"
fi
log "report: $OUTDIR/index.html"
status=0
report=$(score) || status=$?
printf '%s\n' "$report" | sed '$d'
SUMMARY=$(printf '%s\n' "$report" | tail -n 1)
# A wstest that failed is a failed run, whatever its report says.
[[ $wstest_status -eq 0 ]] || status=1
exit "$status"
