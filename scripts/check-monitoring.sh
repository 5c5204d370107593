#!/usr/bin/env bash
# Checks herald's monitoring files, offline, with promtool (Debian's `prometheus` package; installed
# by scripts/install-deps.sh). Part of scripts/test.sh.
#
#   scripts/check-monitoring.sh                        check everything below
#   scripts/check-monitoring.sh --write-prometheusrule regenerate the PrometheusRule from the rules
#
# 1. deploy/prometheus/herald-alerts.yaml passes `promtool check rules`, and a rule file with a
#    broken rule (deploy/prometheus/testdata/broken-rule.yaml) does not: the check can fail.
# 2. Its unit tests pass (`promtool test rules`): herald-alerts.test.yaml (each alert fires on the
#    series that should fire it) and herald-alerts.healthy.test.yaml (a healthy herald fires none).
#    Every alert has a test in both, and every series the rules read is in the healthy test.
# 3. The tests can fail, alert by alert: with an alert's expr made never true the firing tests must
#    fail, and with it made always true the healthy test must fail.
# 4. deploy/kubernetes/components/monitoring/prometheusrule.yaml is what the rules file generates,
#    and a changed rules file generates something else (the comparison can fail).
# 5. Every query of the Grafana dashboard (deploy/grafana/herald-dashboard.json) is valid PromQL
#    (promtool checks it as a recording rule, with the dashboard's $job variable filled in), and a
#    dashboard with a broken query fails the same check.
# (That the rules and the dashboard name only series herald exports is checked against a running
# herald's /metrics by integration/tests/observability.rs; the compose end-to-end test loads the
# rules into a real Prometheus scraping herald.)
set -euo pipefail
cd "$(dirname "$0")/.."

RULES=deploy/prometheus/herald-alerts.yaml
FIRING_TESTS=deploy/prometheus/herald-alerts.test.yaml
HEALTHY_TESTS=deploy/prometheus/herald-alerts.healthy.test.yaml
BROKEN=deploy/prometheus/testdata/broken-rule.yaml
PROMETHEUS_RULE=deploy/kubernetes/components/monitoring/prometheusrule.yaml
DASHBOARD=deploy/grafana/herald-dashboard.json

log() { printf '%s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

# The PrometheusRule holding RULES_FILE's groups (its leading comments left out), on stdout.
prometheus_rule() {
    cat <<EOF
# Generated from deploy/prometheus/herald-alerts.yaml by \`scripts/check-monitoring.sh
# --write-prometheusrule\`: edit that file, not this one (scripts/test.sh fails when they differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: herald
spec:
EOF
    # From `groups:` on, indented under spec; blank lines stay blank.
    awk '/^groups:/ { on = 1 } on { if ($0 == "") print ""; else print "  " $0 }' "$1"
}

if [[ ${1:-} == --write-prometheusrule ]]; then
    prometheus_rule "$RULES" >"$PROMETHEUS_RULE"
    log "wrote $PROMETHEUS_RULE"
    exit 0
elif [[ $# -gt 0 ]]; then
    log "usage: $0 [--write-prometheusrule]"
    exit 2
fi

command -v promtool >/dev/null || fail "promtool is missing (scripts/install-deps.sh installs Debian's prometheus package)"
command -v jq >/dev/null || fail "jq is missing (scripts/install-deps.sh installs it)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- 1. syntax and PromQL -------------------------------------------------------------------------
promtool check rules "$RULES" >"$work/out" 2>&1 || { cat "$work/out" >&2; fail "promtool check rules $RULES"; }
alerts=$(awk '$1 == "-" && $2 == "alert:" { print $3 }' "$RULES")
count=$(wc -w <<<"$alerts")
(( count >= 9 )) || fail "only $count alerts found in $RULES"
if promtool check rules "$BROKEN" >"$work/out" 2>&1; then
    fail "promtool check rules accepted $BROKEN, a rule file with a broken rule"
fi
log "ok: promtool check rules: $count alerts in $RULES; $BROKEN rejected ($(grep -m1 -o 'parse error.*\|could not parse.*\|[^:]*error.*' "$work/out" | head -c 120))"

# --- 2. unit tests ----------------------------------------------------------------------------------
for tests in "$FIRING_TESTS" "$HEALTHY_TESTS"; do
    promtool test rules "$tests" >"$work/out" 2>&1 || { cat "$work/out" >&2; fail "promtool test rules $tests"; }
done
for alert in $alerts; do
    grep -q "alertname: $alert\b" "$FIRING_TESTS" || fail "$alert has no test in $FIRING_TESTS"
    grep -q "alertname: $alert\b" "$HEALTHY_TESTS" || fail "$alert has no test in $HEALTHY_TESTS"
done
for series in $(grep '^ *expr:' "$RULES" | grep -o 'herald_[a-z_]*' | sort -u); do
    grep -q "series: '$series{" "$HEALTHY_TESTS" || fail "$RULES reads $series, which $HEALTHY_TESTS does not give"
done
log "ok: promtool test rules: $FIRING_TESTS, $HEALTHY_TESTS"

# --- 3. the tests can fail --------------------------------------------------------------------------
# with_expr ALERT EXPR: the rules with ALERT's expr replaced (one-line exprs: see the rules file).
with_expr() {
    awk -v alert="$1" -v expr="$2" '
        $1 == "-" && $2 == "alert:" { mine = ($3 == alert) }
        mine && $1 == "expr:" { sub(/expr: .*/, "expr: " expr); replaced = 1 }
        { print }
        END { if (!replaced) exit 1 }' "$RULES"
}
cp "$FIRING_TESTS" "$HEALTHY_TESTS" "$work/"
for alert in $alerts; do
    with_expr "$alert" 'vector(1) > 2' >"$work/herald-alerts.yaml" || fail "no one-line expr for $alert in $RULES"
    if promtool test rules "$work/${FIRING_TESTS##*/}" >/dev/null 2>&1; then
        fail "$alert made never true, yet $FIRING_TESTS passes: no test sees it fire"
    fi
    with_expr "$alert" 'vector(1)' >"$work/herald-alerts.yaml"
    if promtool test rules "$work/${HEALTHY_TESTS##*/}" >/dev/null 2>&1; then
        fail "$alert made always true, yet $HEALTHY_TESTS passes: it does not see it fire"
    fi
done
log "ok: each of the $count alerts, made never true, fails $FIRING_TESTS and, made always true, fails $HEALTHY_TESTS"

# --- 4. the PrometheusRule ----------------------------------------------------------------------------
prometheus_rule "$RULES" >"$work/prometheusrule.yaml"
if ! diff -u "$PROMETHEUS_RULE" "$work/prometheusrule.yaml" >"$work/diff"; then
    cat "$work/diff" >&2
    fail "$PROMETHEUS_RULE differs from what $RULES generates: run scripts/check-monitoring.sh --write-prometheusrule"
fi
with_expr HeraldGobgpdUnreachable 'herald_gobgp_up < 1' >"$work/changed.yaml"
prometheus_rule "$work/changed.yaml" >"$work/changed-prometheusrule.yaml"
if diff -q "$PROMETHEUS_RULE" "$work/changed-prometheusrule.yaml" >/dev/null; then
    fail "a changed rules file generates the same PrometheusRule: the comparison cannot fail"
fi
log "ok: $PROMETHEUS_RULE is generated from $RULES (and a changed rule shows as a difference)"

# --- 5. the dashboard's queries -------------------------------------------------------------------------
# dashboard_as_rules DASHBOARD: each panel query as a recording rule, Grafana's variables filled in.
dashboard_as_rules() {
    echo "groups:"
    echo "  - name: dashboard"
    echo "    rules:"
    jq -r '.panels[] | select(.targets) | .targets[] | .expr' "$1" |
        sed -e 's/\$job/.+/g' -e 's/\$__rate_interval/5m/g' -e 's/\$__interval/1m/g' -e 's/\$__range/1h/g' |
        awk '{ gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); printf "      - record: dashboard:query%d\n        expr: \"%s\"\n", NR, $0 }'
}
queries=$(jq '[.panels[] | select(.targets) | .targets[]] | length' "$DASHBOARD")
(( queries >= 10 )) || fail "only $queries queries found in $DASHBOARD"
dashboard_as_rules "$DASHBOARD" >"$work/dashboard-rules.yaml"
promtool check rules "$work/dashboard-rules.yaml" >"$work/out" 2>&1 ||
    { cat "$work/out" >&2; fail "a query of $DASHBOARD is not valid PromQL (query N is its Nth target)"; }
jq '.panels[1].targets[0].expr |= sub("\\)$"; "")' "$DASHBOARD" >"$work/broken-dashboard.json"
dashboard_as_rules "$work/broken-dashboard.json" >"$work/broken-dashboard-rules.yaml"
if promtool check rules "$work/broken-dashboard-rules.yaml" >/dev/null 2>&1; then
    fail "a dashboard query with an unclosed parenthesis passed the PromQL check"
fi
log "ok: the $queries queries of $DASHBOARD are valid PromQL (one broken on purpose is rejected)"
