#!/usr/bin/env bash
# The README quick start, followed literally as a new user would: `make run`, then swaks
# to 127.0.0.1:10025, then the message appears in var/maildir/new/. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
count() { { ls var/maildir/new 2>/dev/null || true; } | wc -l; }
before=$(count)
log=$(mktemp)
setsid make run >"$log" 2>&1 &
leader=$!
stop() {
    kill -TERM -- "-$leader" 2>/dev/null || true
    # make exits at once; supervisord then stops its programs: wait for the whole group.
    for _ in $(seq 1 60); do kill -0 -- "-$leader" 2>/dev/null || break; sleep 0.5; done
    wait "$leader" 2>/dev/null || true
}
trap stop EXIT
# intake on 10025, and the local sink on 10026 (a message deliver forwards before the sink
# listens waits for its retry, a minute later): by the time a person has typed swaks in
# another terminal, both listen.
for port in 10025 10026; do
    for _ in $(seq 1 120); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 1
    done
done
swaks --server 127.0.0.1:10025 --to someone@example.com --h-Subject "quick start" >/dev/null
for _ in $(seq 1 30); do
    if [ "$(count)" -gt "$before" ]; then
        file=var/maildir/new/$(ls -t var/maildir/new/ | head -n 1)
        grep -q "Subject: quick start" "$file"
        echo "quick start: message arrived in $file"
        exit 0
    fi
    sleep 1
done
echo "quick start: no message arrived in var/maildir/new/" >&2
cat "$log" >&2
tail -n 50 var/log/*.log >&2 || true
exit 1
