#!/usr/bin/env bash
# Compose's `processing` service: submit the PyFlink jobs to the session cluster with `flink run -py`, once.
# Nothing is submitted while a job is already running; after a restart of the cluster the job resumes from
# the newest retained checkpoint on the shared state volume.
set -euo pipefail

jobmanager="${FLINK_JOBMANAGER:-flink-jobmanager:8081}"
entry="${RTAP_FLINK_ENTRY:-/opt/rtap/services/processing/__main__.py}"
checkpoints="${FLINK_CHECKPOINTS:-/opt/flink/state/checkpoints}"

active_jobs() {
  python - "http://${jobmanager}/jobs/overview" <<'PY'
import json, sys, urllib.request
jobs = json.load(urllib.request.urlopen(sys.argv[1], timeout=10))["jobs"]
print(sum(job["state"] in {"INITIALIZING", "CREATED", "RUNNING", "RESTARTING"} for job in jobs))
PY
}

if [ "$(active_jobs)" -gt 0 ]; then
  echo "a job is already running on ${jobmanager}; nothing to submit"
  exit 0
fi

resume=()
latest="$(ls -1dt "${checkpoints}"/*/chk-*/_metadata 2>/dev/null | head -n 1 || true)"
if [ -n "${latest}" ]; then
  resume=(--fromSavepoint "$(dirname "${latest}")" --allowNonRestoredState)
  echo "resuming from checkpoint $(dirname "${latest}")"
fi

exec /opt/flink/bin/flink run --jobmanager "${jobmanager}" --detached "${resume[@]}" \
  --pyExecutable /opt/venv/bin/python --pyClientExecutable /opt/venv/bin/python --python "${entry}"
