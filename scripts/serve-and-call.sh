#!/usr/bin/env bash
# Start the local inference service on MODEL_DIR with PYTHON, call it through the ML SDK from a
# second process on N generated sample photos (predictions printed, annotated copies in OUTDIR),
# then stop it. Used by scripts/demo.sh and by scripts/arm/run-arm.sh inside the ARM chroots.
#   scripts/serve-and-call.sh PYTHON MODEL_DIR OUTDIR [N]
# READY_WAIT_S (default 30) bounds the start-up: loading a model under emulation takes longer.
set -euo pipefail
py="$1" model="$2" out="$3" n="${4:-3}"
cd "$(dirname "$0")/.."
rm -rf "$out" && mkdir -p "$out/input"
echo "making $n sample photos in $out/input..."
mapfile -t samples < <("$py" scripts/make_samples.py "$out/input" "$n")
cat > "$out/params.yaml" <<YAML
MLModelDestinationPath: $model
MLModelResourceId: $(basename "$model")
LocalInferenceServiceName: objectDetection
LocalInferenceServiceTimeoutSeconds: "${SERVICE_TIMEOUT_S:-10}"
LocalInferenceServiceMemoryLimitKB: "500000"
YAML
export GG_ML_IPC_FILE="$PWD/$out/ipc.json"
echo "starting the inference service on $model (log: $out/service.log; ready in seconds, minutes under emulation)..."
started=$SECONDS
"$py" -m connector serve --config "$out/params.yaml" --port 0 2> "$out/service.log" &
service=$!
trap 'kill -TERM $service 2>/dev/null; wait $service 2>/dev/null || true' EXIT
deadline=$((SECONDS + ${READY_WAIT_S:-30}))
port=""
port_of() {  # the service's entry in the client file (absent until the host has written it)
  "$py" -c 'import sys; from connector.ipc import clientfile; print(clientfile.read(sys.argv[1], "objectDetection")["port"])' "$GG_ML_IPC_FILE" 2>/dev/null || true
}
while :; do  # the service writes the client file, then answers /healthz when ready
  [ -f "$GG_ML_IPC_FILE" ] && port=$(port_of)
  if [ -n "$port" ] && "$py" -c 'import sys,urllib.request; urllib.request.urlopen("http://127.0.0.1:%s/healthz" % sys.argv[1], timeout=2)' "$port" 2>/dev/null; then
    break
  fi
  kill -0 $service 2>/dev/null || { echo "the service failed to start:" >&2; cat "$out/service.log" >&2; exit 1; }
  [ $SECONDS -lt $deadline ] || { echo "the service was not ready after ${READY_WAIT_S:-30} s:" >&2; cat "$out/service.log" >&2; exit 1; }
  sleep 0.2
done
echo "service ready on port $port ($((SECONDS - started)) s); calling it through the ML SDK (scripts/demo_client.py):"
# MIN_SCORE: the drawing threshold (default 0.3); the answer has every row above the model's floor.
"$py" scripts/demo_client.py ${MIN_SCORE:+--min-score "$MIN_SCORE"} "$out" "${samples[@]}"
echo "done; stopping the service"
