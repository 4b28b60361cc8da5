#!/bin/sh
# Gathers what `make gpu-bundle` built (CUDA=1, binaries linked with the rpath $ORIGIN/../lib)
# into a folder that runs on the GPU machine, which has the CUDA 13 runtime and cuBLAS but none
# of our -dev libraries:
#
#   BUNDLE/bin/pio  BUNDLE/plugins/*.so  BUNDLE/tests/test_*   the programs
#   BUNDLE/bin/gpu_read_floor       the read-floor benchmark (benchmarks/gpu_read_floor.cu)
#   BUNDLE/lib/                     the shared libraries they need that are neither glibc,
#                                   libstdc++/libgcc nor CUDA's (cmocka, yaml, jansson, ...)
#   BUNDLE/run-gpu-tests.sh OUT     runs the GPU tests, then compute-sanitizer memcheck and
#                                   racecheck on them, logs under OUT
#
# Usage: tools/gpu_bundle.sh BUILD_DIR BUNDLE_DIR   (the device command: docs/KERNELS.md)
# Also writes BUNDLE_DIR.tar.xz, the stripped bundle in one archive.
set -eu
build=$1
bundle=$2

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/plugins" "$bundle/tests" "$bundle/lib"
cp "$build/bin/pio" "$bundle/bin/"
if [ -x "$build/bin/gpu_read_floor" ]; then
    cp "$build/bin/gpu_read_floor" "$bundle/bin/"
fi
for f in "$build"/plugins/*.so; do
    [ -e "$f" ] && cp "$f" "$bundle/plugins/"
done
for f in "$build"/tests/gpu/test_*; do
    case $f in *.d) continue ;; esac
    [ -x "$f" ] && cp "$f" "$bundle/tests/"
done

# Libraries: every resolved dependency of every program, except the system's own.
for f in "$bundle"/bin/* "$bundle"/plugins/* "$bundle"/tests/*; do
    [ -e "$f" ] || continue
    ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
done | sort -u | while read -r lib; do
    case $(basename "$lib") in
    libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | ld-linux* | libresolv.so*) ;;
    libstdc++.so* | libgcc_s.so*) ;;
    libcuda.so* | libcudart.so* | libcublas* | libnvrtc* | libnvJitLink* | libnccl*) ;;
    *) cp -L "$lib" "$bundle/lib/" ;;
    esac
done

cat >"$bundle/env.sh" <<'EOF'
# Sourced before running anything of the bundle: cuBLASLt and NCCL come from the machine's CUDA
# (rpath /usr/local/cuda/lib64), or from wherever the machine has them (NCCL is 200 MB, so the
# bundle does not carry it; PyTorch's wheels bring one).
bundle_dir=${bundle_dir:-$(pwd)}
for lib in libcublasLt.so.13 libnccl.so.2; do
    if ldd "$bundle_dir/bin/pio" "$bundle_dir"/plugins/*.so 2>/dev/null | grep -q "$lib.* => not found"; then
        d=$(find / -name "$lib*" -not -path '/proc/*' 2>/dev/null | head -n 1)
        [ -n "$d" ] && export LD_LIBRARY_PATH="$(dirname "$d")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
done
export NCCL_NVLS_ENABLE=0 # never NVLink multicast on the lent machines
EOF

cat >"$bundle/run-gpu-tests.sh" <<'EOF'
#!/bin/sh
# Runs this bundle's GPU tests, then compute-sanitizer memcheck and racecheck over the op tests
# (every test but the end-to-end plugin and parallelism ones).
# Usage: sh run-gpu-tests.sh OUT_DIR   (logs: OUT_DIR/<test>.log, <test>.memcheck.log, ...)
out=${1:-.}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
bundle_dir=$here . "$here/env.sh"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
    /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1)
status=0
for t in "$here"/tests/test_*; do
    name=$(basename "$t")
    PIO_KERNELS_BENCH=${PIO_KERNELS_BENCH:-1} "$t" >"$out/$name.log" 2>&1 || status=1
    echo "== $name: $(grep -E 'PASSED|FAILED' "$out/$name.log" | tr '\n' ' ')"
    grep -E "^matmul |^attention |seed|normalised|got|want|Error|error" "$out/$name.log" | head -n 40
    case $name in test_plugins_* | test_tensor_parallel_*) continue ;; esac
    if [ -z "$sanitizer" ]; then
        echo "== $name: compute-sanitizer not found"
        status=1
        continue
    fi
    # memcheck and racecheck side by side (each serialises its own kernels), smaller shapes.
    for tool in memcheck racecheck; do
        PIO_GPU_TEST_SANITIZER=1 PIO_KERNELS_BENCH=0 timeout "${SANITIZER_TIMEOUT:-150}" \
            "$sanitizer" --tool "$tool" --error-exitcode 9 "$t" >"$out/$name.$tool.log" 2>&1 &
    done
    wait
    # Racecheck flags cuBLASLt's own small-M kernels (nvjet_sm90_tss_*, synchronised through
    # mbarriers it does not follow); only hazards in other kernels (ours) count.
    for tool in memcheck racecheck; do
        log="$out/$name.$tool.log"
        ours=$(grep 'Race reported' "$log" | grep -vc 'nvjet_')
        grep -qE 'ERROR SUMMARY: 0 errors|RACECHECK SUMMARY: ' "$log" && [ "$ours" -eq 0 ] &&
            grep -q 'PASSED' "$log" && ! grep -q 'FAILED' "$log" || status=1
        echo "== $name $tool: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED' "$log" |
            tr '\n' ' ')(hazards outside cuBLASLt: $ours)"
    done
done
echo "run-gpu-tests: status $status"
exit $status
EOF
chmod +x "$bundle/run-gpu-tests.sh"
# The binaries carry every kernel for every GPU test (~10 MB each): stripped and packed, the
# whole bundle travels as one archive of ~15 MB (the device tool's carry limit is 64 MB).
# On the GPU machine: mkdir -p B && tar xJf bundle.tar.xz -C B && sh B/run-gpu-tests.sh OUT
find "$bundle/bin" "$bundle/plugins" "$bundle/tests" -type f -exec strip {} +
tar cf - -C "$bundle" . | xz -T0 -6 >"$bundle.tar.xz"
echo "gpu bundle: $bundle ($(du -sh "$bundle" | cut -f1)), packed: $bundle.tar.xz ($(du -sh "$bundle.tar.xz" | cut -f1))"
