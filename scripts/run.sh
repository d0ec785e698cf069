#!/usr/bin/env bash
# The main job on embedded defaults: an S3 endpoint (embedded SeaweedFS unless one is configured),
# `dvc repro`, `dvc push` of data and models to the same S3, then where the dataset is and how to get it.
set -euo pipefail

if [[ -z "${AWS_ENDPOINT_URL:-}${AWS_ENDPOINT_URL_S3:-}" ]]; then
  ganforge s3 start >/dev/null
  # shellcheck disable=SC1091
  source .ganforge/s3.env
  echo "S3: embedded SeaweedFS at $AWS_ENDPOINT_URL (stop it with: make stop)"
fi

bucket="${GANFORGE_BUCKET:-ganforge}"
if [[ "$bucket" != ganforge ]]; then
  # .dvc/config names the default bucket; config.local (never committed) overrides it for this clone.
  dvc remote modify --local storage url "s3://$bucket/dvc-store"
fi

# shellcheck source=scripts/local_prefect.sh
source scripts/local_prefect.sh
start_local_prefect_server
# The generate stage publishes a dataset only from a model whose metrics/eval.json (bound to it by its sha256)
# passes params.yaml's gate: a model that misses it stops `dvc repro` there, visibly, with nothing published.
dvc repro
# Prepared data, models and the user's data/raw to the remote: another clone with the same S3 and
# this dvc.lock gets them back with `dvc pull`.
dvc push
# The model just trained, published and made production (it passed params.yaml's gate above): the nightly
# generate/batch-generation uses production.
ganforge models publish --promote >/dev/null

name=$(python -c "from gan_core.config import load_params; print(load_params().generate.name)")
version=$(python - "$bucket" "$name" <<'PY'
import sys
from gan_core.publication.read import resolve_version
print(resolve_version(sys.argv[1], sys.argv[2]))
PY
)
cat <<MSG

Dataset published: s3://$bucket/datasets/$name/$version/
  source .venv/bin/activate               # the project's virtualenv: ganforge, dvc, prefect
  source .ganforge/s3.env                 # endpoint, keys and bucket of the embedded S3
  ganforge list $name
  ganforge download $name --version latest --to downloads
  python -c "import pandas as pd; print(pd.read_parquet('s3://$bucket/datasets/$name/$version/'))"
Model published and promoted to production: ganforge models list   (the nightly generation uses it)
Metrics: metrics/eval.json (dvc metrics show)   Samples: plots/samples.png
Data and models pushed to s3://$bucket/dvc-store: commit dvc.lock, and another clone gets them with \`dvc pull\`.
MSG
