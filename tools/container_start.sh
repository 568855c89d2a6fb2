#!/usr/bin/env bash
# Container entry point: TensorRT engines first (built on this GPU when missing or stale, a fingerprint check when
# current), then Triton on them (loopback only), the daemon once Triton is ready; a failed engine build, or either
# process exiting, stops the container so the orchestrator restarts it.
set -euo pipefail
config="${1:-/etc/edge-inspect/edge.toml}"
models="${EDGE_MODELS:-/opt/edge-inspect/models}"                        # ONNX forms and anomaly bands (image)
repository="${EDGE_MODEL_REPOSITORY:-/var/lib/edge-inspect/model_repository}"  # plans and configs (state volume)
edge-inspect check-config "$config"
trap 'kill -TERM ${builder:-} ${triton:-} ${daemon:-} 2>/dev/null; wait' TERM INT
(cd /opt/edge-inspect && exec python -m tools.gpu.build_engines --models "$models" --out "$repository") &
builder=$!
wait "$builder"
builder=
/opt/tritonserver/bin/tritonserver --model-repository="$repository" \
    --grpc-address=127.0.0.1 --http-address=127.0.0.1 --metrics-address=0.0.0.0 \
    --exit-timeout-secs=10 &
triton=$!
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
