#!/usr/bin/env bash
# Container entry point: Triton first (loopback only), the daemon once Triton is ready; either one
# exiting stops the container so the orchestrator restarts it.
set -euo pipefail
config="${1:-/etc/edge-inspect/edge.toml}"
edge-inspect check-config "$config"
/opt/tritonserver/bin/tritonserver --model-repository=/var/lib/triton/model_repository \
    --grpc-address=127.0.0.1 --http-address=127.0.0.1 --metrics-address=0.0.0.0 \
    --exit-timeout-secs=10 &
triton=$!
trap 'kill -TERM "$triton" "${daemon:-}" 2>/dev/null; wait' TERM INT
for _ in $(seq 1 900); do
    curl -sf http://127.0.0.1:8000/v2/health/ready >/dev/null && break
    kill -0 "$triton" || exit 1
    sleep 1
done
edge-inspect run --config "$config" &
daemon=$!
wait -n "$triton" "$daemon"
kill -TERM "$triton" "$daemon" 2>/dev/null || true
wait
