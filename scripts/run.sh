#!/usr/bin/env bash
# The main job on embedded defaults: an S3 endpoint (embedded SeaweedFS unless one is configured),
# `dvc repro`, then where the dataset is and how to get it.
set -euo pipefail

if [[ -z "${AWS_ENDPOINT_URL:-}${AWS_ENDPOINT_URL_S3:-}" ]]; then
  ganforge s3 start >/dev/null
  # shellcheck disable=SC1091
  source .ganforge/s3.env
  echo "S3: embedded SeaweedFS at $AWS_ENDPOINT_URL (stop it with: make stop)"
fi

dvc repro

name=$(python -c "from gan_core.config import load_params; print(load_params().generate.name)")
bucket="${GANFORGE_BUCKET:-ganforge}"
version=$(python - "$bucket" "$name" <<'PY'
import sys
from gan_core.storage import resolve_version
print(resolve_version(sys.argv[1], sys.argv[2]))
PY
)
cat <<MSG

Dataset published: s3://$bucket/datasets/$name/$version/
  source .ganforge/s3.env                 # endpoint, keys and bucket of the embedded S3
  ganforge list $name
  ganforge download $name --version latest --to downloads
  python -c "import pandas as pd; print(pd.read_parquet('s3://$bucket/datasets/$name/$version/'))"
Metrics: metrics/eval.json (dvc metrics show)   Samples: plots/samples.png
MSG
