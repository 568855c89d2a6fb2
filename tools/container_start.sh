#!/usr/bin/env bash
# Container entry point: what Triton serves first (tools.gpu.station_repository: TensorRT engines built on this GPU when
# missing or stale, a fingerprint check when current; ONNX Runtime on the GPU for a model whose engine fails; the CPU
# variant when the container has no usable GPU), then Triton on it (loopback only), the daemon once Triton is ready.
# Serving on a fallback (exit 3) goes on and says so (this log, /readyz, edge_model_backend_info); nothing to serve,
# or either process exiting, stops the container so the orchestrator restarts it.
set -euo pipefail
config="${1:-/etc/edge-inspect/edge.toml}"
models="${EDGE_MODELS:-/opt/edge-inspect/models}"                        # ONNX forms and anomaly bands (image)
repository="${EDGE_MODEL_REPOSITORY:-/var/lib/edge-inspect/model_repository}"  # a link to the variant (state volume)
edge-inspect check-config "$config"
trap 'kill -TERM ${builder:-} ${triton:-} ${daemon:-} 2>/dev/null; wait' TERM INT
(cd /opt/edge-inspect && exec python -m tools.gpu.station_repository --models "$models" --out "$repository") &
builder=$!
prepared=0
wait "$builder" || prepared=$?
builder=
[ "$prepared" -eq 0 ] || [ "$prepared" -eq 3 ] || exit "$prepared"
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
