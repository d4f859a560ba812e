#!/usr/bin/env bash
# gengate on a GPU against llama.cpp's own tools, in one device call of under 10 minutes; one JSON report.
#
#   bash bench/gpu.sh bundle   here, once: .cache/gpu/ gets the wheels the GPU image lacks (Python 3.12), SmolLM2's
#                              description for a random-weight copy (bench/random_model.py: no weights travel; the
#                              real file is over what a call carries) and the pinned llama-cpp-python sources with
#                              llama.cpp, trimmed to what a CUDA build needs
#   bash bench/gpu.sh run      there (device run, carry [".cache/gpu", "gengate"]): builds llama.cpp once with CUDA
#                              (its shared libraries, llama-bench, llama-batched-bench), puts those libraries in
#                              llama-cpp-python's Python package as its wheel would, and runs bench/gpu.py:
#                              llama-bench tg128, llama-batched-bench at B = 8, 32, 64, gengate through the gateway
#                              at N = 1, 8, 32, 64 → $OUT/gpu.json (or .cache/gpu-report.json)
#
# GPU_CMAKE_ARGS replaces the CUDA flags (GPU_CMAKE_ARGS="-DGGML_CUDA=OFF" GPU_NGL=0 checks the script on a CPU);
# GPU_PYTHON the interpreter (python3); GPU_NS, GPU_BATCHES, GPU_ROUNDS narrow the run.
set -euo pipefail
cd "$(dirname "$0")/.."
G=.cache/gpu
VERSION=0.3.36
SDIST=.cache/sdist/llama_cpp_python-$VERSION.tar.gz
WHEELS=(grpcio grpcio-status grpcio-health-checking grpcio-reflection protobuf googleapis-common-protos gguf diskcache)

case "${1:-}" in
bundle)
    rm -rf "$G" && mkdir -p "$G/wheels"
    test -f "$SDIST" || .venv/bin/pip download -q --no-deps --no-binary :all: -d .cache/sdist "llama-cpp-python==$VERSION"
    # The versions this venv runs with (the stubs in gengate/ were generated against its protobuf).
    pins=$(.venv/bin/pip freeze | grep -iE "^($(IFS='|'; echo "${WHEELS[*]}"))==" )
    # shellcheck disable=SC2086
    .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$G/wheels" $pins
    .venv/bin/python -c "from bench.bench import model_path; print(model_path())" > "$G/model-path"
    .venv/bin/python -m bench.random_model describe "$(cat "$G/model-path")" "$G/smollm2.json.gz"
    rm "$G/model-path"
    # llama.cpp without what a CUDA build of the library and two tools never reads.
    tar xzf "$SDIST" -C "$G"
    src="$G/llama_cpp_python-$VERSION/vendor/llama.cpp"
    rm -rf "$src"/{models,docs,media,gguf-py,examples,tests,scripts,.devops,benches,pocs,licenses,conversion} \
        "$src"/ggml/src/ggml-{vulkan,sycl,metal,cann,opencl,musa,hip,webgpu,kompute,zdnn,rpc,blas,openvino,et,hexagon} \
        "$src"/tools/{ui,server,cli} "$src"/.github "$G/llama_cpp_python-$VERSION"/{examples,docs,tests,docker,.git,.github}
    mkdir -p "$src/examples" && : > "$src/examples/CMakeLists.txt"
    tar czf "$G/src.tar.gz" -C "$G" "llama_cpp_python-$VERSION" && rm -rf "${G:?}/llama_cpp_python-$VERSION"
    du -sh "$G" "$G"/*
    ;;
run)
    PY=${GPU_PYTHON:-python3}
    out=${OUT:-.cache}/gpu.json
    [ -n "${OUT:-}" ] || out=.cache/gpu-report.json
    start=$(date +%s)
    site=/tmp/gengate-gpu-site
    if [ -z "${GPU_SKIP_WHEELS:-}" ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "$G"/wheels/*.whl
    fi
    rm -rf /tmp/gengate-gpu-src && mkdir -p /tmp/gengate-gpu-src
    tar xzf "$G/src.tar.gz" -C /tmp/gengate-gpu-src
    pkg=/tmp/gengate-gpu-src/llama_cpp_python-$VERSION
    cmake -S "$pkg/vendor/llama.cpp" -B /tmp/gengate-gpu-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        ${GPU_CMAKE_ARGS:--DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90} > /tmp/gengate-gpu-cmake.log
    cmake --build /tmp/gengate-gpu-build -j "$(nproc)" --target llama mtmd llama-bench llama-batched-bench \
        > /tmp/gengate-gpu-build.log
    echo "llama.cpp built in $(( $(date +%s) - start )) s" >&2
    mkdir -p "$pkg/llama_cpp/lib" && cp -a /tmp/gengate-gpu-build/bin/*.so* "$pkg/llama_cpp/lib/"   # as a wheel has them
    export PYTHONPATH="$site:$pkg:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -m bench.gpu --desc "$G/smollm2.json.gz" --tools /tmp/gengate-gpu-build/bin --out "$out" \
        --ngl "${GPU_NGL:-999}" --ns "${GPU_NS:-1,8,32,64}" --batches "${GPU_BATCHES:-8,32,64}" \
        --rounds "${GPU_ROUNDS:-3}"
    echo "in all $(( $(date +%s) - start )) s; report: $out" >&2
    ;;
*)
    sed -n '2,17p' "$0"
    exit 2
    ;;
esac
