#!/usr/bin/env bash
# Builds .whl/ for benchmarks/gpu_check.sh: the wheels (CPython 3.12, x86-64) that a GPU
# machine with PyTorch and transformers but no network lacks: Ray with its Serve and Tune
# needs, Optuna, pydantic, pyzmq, and hpcray itself. Ray's Java jars, RLlib, C++ API and
# dashboard front end are left out of its wheel so that everything fits a 64 MiB transfer.
set -eu -o pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1 manylinux_2_24 \
         manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux_2_5; do
    platforms+=(--platform "${p}_x86_64")
done
# the versions this project is tested with
for pkg in ray==2.60.0 aiohttp==3.14.5 aiohttp-cors==0.8.1 alembic==1.20.1 annotated-doc==0.0.7 \
    annotated-types==0.8.0 colorful==0.5.8 colorlog==6.12.0 fastapi==0.165.0 \
    google-api-core==2.44.0 googleapis-common-protos==1.76.0 grpcio-reflection==1.84.0 \
    protobuf==7.36.2 httptools==0.9.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
    Mako==1.4.3 mmh3==5.3.1 opencensus==0.11.4 opencensus-context==0.1.3 \
    opentelemetry-api==1.45.2 opentelemetry-exporter-prometheus==0.66b2 \
    opentelemetry-proto==1.45.2 opentelemetry-sdk==1.45.2 \
    opentelemetry-semantic-conventions==0.66b2 optuna==5.0.0 proto-plus==1.29.0 \
    pydantic==2.14.4 pydantic_core==2.50.5 python-dotenv==1.2.4 pyzmq==27.3.0 \
    referencing==0.37.0 rpds-py==2026.9.1 smart_open==9.0.2 SQLAlchemy==2.1.9 \
    starlette==1.10.0 tensorboardX==2.6.5 typing-inspection==0.4.5 typing_extensions==4.16.0 \
    uvicorn==0.54.0 watchfiles==1.3.0 websockets==17.4 yarl==1.25.1 multidict==7.2.1 \
    propcache==0.5.4 msgpack==1.2.4; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d .whl "$pkg"
done
python3 - <<'EOF'
import pathlib, zipfile
wheel = next(pathlib.Path(".whl").glob("ray-*.whl"))
slim = wheel.with_suffix(".slim")
drop = ("ray/jars/", "ray/rllib/", "ray/cpp/", "ray/llm/", "ray/dashboard/client/")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if not item.filename.startswith(drop):
            dst.writestr(item, src.read(item.filename), compresslevel=9)
slim.replace(wheel)
EOF
rm -f .whl/hpcray-*.whl
python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl .
du -sh .whl
