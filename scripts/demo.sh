#!/usr/bin/env bash
# Set up .venv, start the local inference service on the bundled demo-ssd detector, call it from a
# second process through the ML SDK on generated sample photos (predictions printed, annotated
# copies in out/demo/), then stop the service.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-venv.sh onnx,dlr
py=.venv/bin/python
rm -rf out/demo && mkdir -p out/demo/input
mapfile -t samples < <("$py" scripts/make_samples.py out/demo/input 3)

model=$("$py" -m connector models | awk '$1 == "demo-ssd" {print $2}')
cat > out/demo/params.yaml <<YAML
MLModelDestinationPath: $model
MLModelResourceId: demo-ssd
LocalInferenceServiceName: objectDetection
LocalInferenceServiceTimeoutSeconds: "10"
LocalInferenceServiceMemoryLimitKB: "500000"
YAML
export GG_ML_IPC_FILE="$PWD/out/demo/ipc.json"
"$py" -m connector serve --config out/demo/params.yaml --port 0 2> out/demo/service.log &
service=$!
trap 'kill -TERM $service 2>/dev/null; wait $service 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do  # the service writes the client file, then answers /healthz when ready
  if [ -f "$GG_ML_IPC_FILE" ]; then
    port=$("$py" -c 'import sys; from connector.ipc import clientfile; print(clientfile.read(sys.argv[1], "objectDetection")["port"])' "$GG_ML_IPC_FILE")
    if "$py" -c 'import sys,urllib.request; urllib.request.urlopen("http://127.0.0.1:%s/healthz" % sys.argv[1], timeout=1)' "$port" 2>/dev/null; then
      break
    fi
  fi
  kill -0 $service 2>/dev/null || { echo "the service failed to start:" >&2; cat out/demo/service.log >&2; exit 1; }
  sleep 0.1
done
echo "service ready on port $port (log: out/demo/service.log)"
"$py" scripts/demo_client.py out/demo "${samples[@]}"
