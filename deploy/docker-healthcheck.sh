#!/bin/sh
# HEALTHCHECK of the airgw image (installed as /usr/local/bin/airgw-healthcheck).
# AIRGW_HEALTH_URL, when set, is probed. Otherwise the daemon running as PID 1
# decides: the control plane answers GET /healthz on its Admin API port, the
# data plane serves its metrics page (both ports as in deploy/compose/).
url=${AIRGW_HEALTH_URL:-}
if [ -z "$url" ]; then
    if tr '\0' ' ' </proc/1/cmdline | grep -q airgw-controlplane; then
        url=http://127.0.0.1:9180/healthz
    else
        url=http://127.0.0.1:9091/apisix/prometheus/metrics
    fi
fi
exec curl -fsS -o /dev/null --max-time 3 "$url"
