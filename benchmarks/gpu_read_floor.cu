/*
 * What the GPU's memory reads can reach, as references for the decode kernels (a benchmark,
 * not a test; docs/KERNELS.md, "Seventh session", has the H100 and H200 numbers):
 *
 *   chain   a decode step's projections as separate read-only kernels: LAYERS layers of four
 *           reads sized like Qwen3-4B's qkv, o, gate/up and down weights (31.5, 21.0, 99.6 and
 *           49.8 MB, every one its own buffer: 7.27 GB, so nothing stays in L2), recorded in one
 *           CUDA graph and replayed; each kernel issues its first loads, then waits for the one
 *           before (programmatic dependent launch) as the GEMVs do. Blocks of 256 threads, 8
 *           loads of 16 bytes in flight a thread, 2 / 4 / 8 blocks an SM; also without the
 *           programmatic launches.
 *   single  one 2 GiB read: 16-byte register loads, and cp.async.bulk rings in shared memory
 *           (each warp its own ring of `slots` chunks; chunks of 2-16 KB).
 *
 *   gpu_read_floor [--device N]
 *
 * Bytes counted are bytes read (the bulk rings read whole chunks: up to 0.1 % less than the
 * buffer); GB = 10^9 bytes. Built by `make gpu-bundle` (bin/).
 */
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <cuda_runtime.h>

#include "kernels/cuda/cuda_internal.h" /* pk_load_weights16, pk_pdl_wait, pk_mbar_wait, ... */

namespace {

constexpr int LAYERS = 36;
constexpr size_t PROJECTION_BYTES[4] = {31457280, 20971520, 99614720, 49807360};
constexpr size_t SINGLE_BYTES = (size_t)2 << 30;
constexpr int THREADS = 256;
constexpr int LOADS = 8; /* 16-byte loads in flight a thread */
constexpr int REPS = 10;

bool check(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return true;
    fprintf(stderr, "gpu_read_floor: %s: %s\n", what, cudaGetErrorString(e));
    return false;
}

/* Reads n16 16-byte words grid-stride, LOADS at a time; the first batch before the
 * programmatic wait when `pdl` (a GEMV must wait before it reads its input). */
__global__ void __launch_bounds__(THREADS) read_kernel(const uint4 *w, size_t n16, unsigned *sink,
                                                       int pdl)
{
    if (pdl)
        pk_pdl_launch_dependents();
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    uint32_t acc = 0;
    bool waited = !pdl;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += LOADS * stride) {
        uint4 v[LOADS];
#pragma unroll
        for (int u = 0; u < LOADS; u++)
            v[u] = i + u * stride < n16 ? pk_load_weights16(w + i + u * stride)
                                        : make_uint4(0, 0, 0, 0);
        if (!waited) {
            pk_pdl_wait();
            waited = true;
        }
#pragma unroll
        for (int u = 0; u < LOADS; u++)
            acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    if (!waited)
        pk_pdl_wait();
    if (acc == 0x9e3779b9u) /* never, but the loads cannot be dropped */
        sink[0] = acc;
}

/* Each warp streams its own contiguous part of `bytes` through `slots` shared-memory chunks
 * filled by cp.async.bulk (lane 0 issues, one mbarrier a chunk); the lanes read each chunk. */
__global__ void bulk_kernel(const char *w, size_t bytes, int chunk, int slots, unsigned *sink)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    uint64_t *bar = (uint64_t *)smem + warp * 16;
    unsigned char *ring = smem + 4096 + (size_t)warp * slots * chunk;
    const size_t nw = (size_t)gridDim.x * warps, gw = (size_t)blockIdx.x * warps + warp;
    const size_t per = bytes / nw / chunk * chunk, n_chunks = per / chunk;
    const char *base = w + gw * per;
    auto fill = [&](size_t c, int s) {
        pk_mbar_expect_bytes(&bar[s], (unsigned)chunk);
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], "
                     "[%1], %2, [%3];" ::"r"(pk_smem_addr(ring + (size_t)s * chunk)),
                     "l"(base + c * chunk), "r"(chunk), "r"(pk_smem_addr(&bar[s]))
                     : "memory");
    };
    if (lane == 0) {
        for (int s = 0; s < slots; s++)
            pk_mbar_init(&bar[s], 1);
        pk_mbar_init_fence();
        for (int s = 0; s < slots && (size_t)s < n_chunks; s++)
            fill(s, s);
    }
    __syncwarp();
    uint32_t acc = 0;
    for (size_t c = 0; c < n_chunks; c++) {
        const int s = (int)(c % slots);
        pk_mbar_wait(&bar[s], (unsigned)((c / slots) & 1));
        const uint4 *b = (const uint4 *)(ring + (size_t)s * chunk);
        for (int i = lane; i < chunk / 16; i += 32) {
            const uint4 v = b[i];
            acc ^= v.x ^ v.w;
        }
        __syncwarp();
        if (lane == 0 && c + slots < n_chunks)
            fill(c + slots, s);
    }
    if (acc == 0x9e3779b9u)
        sink[0] = acc;
}

/* Mean microseconds of REPS launches of `launch` (after one warm-up), or -1 on an error. */
template <typename Launch> double time_us(cudaStream_t stream, Launch launch, const char *what)
{
    cudaEvent_t a = nullptr, b = nullptr;
    float ms = 0.0f;
    bool ok = check(cudaEventCreate(&a), "cudaEventCreate") &&
              check(cudaEventCreate(&b), "cudaEventCreate") && check(launch(), what) &&
              check(cudaStreamSynchronize(stream), what) &&
              check(cudaEventRecord(a, stream), "cudaEventRecord");
    for (int r = 0; ok && r < REPS; r++)
        ok = check(launch(), what);
    ok = ok && check(cudaEventRecord(b, stream), "cudaEventRecord") &&
         check(cudaEventSynchronize(b), what) && check(cudaEventElapsedTime(&ms, a, b), what);
    if (a != nullptr)
        cudaEventDestroy(a);
    if (b != nullptr)
        cudaEventDestroy(b);
    return ok ? (double)ms * 1e3 / REPS : -1.0;
}

/* The chain of LAYERS x 4 reads as one graph; false on an error. */
bool chain(cudaStream_t stream, char *(&bufs)[LAYERS][4], unsigned *sink, int sms)
{
    double total = 0.0;
    for (size_t b : PROJECTION_BYTES)
        total += (double)b * LAYERS;
    printf("chain of %d reads (%.2f GB, one graph):\n", 4 * LAYERS, total * 1e-9);
    for (int per_sm : {2, 4, 8})
        for (int pdl = 0; pdl < 2; pdl++) {
            cudaGraph_t graph = nullptr;
            cudaGraphExec_t exec = nullptr;
            bool ok = check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
                            "cudaStreamBeginCapture");
            for (int l = 0; ok && l < LAYERS; l++)
                for (int j = 0; ok && j < 4; j++) {
                    cudaLaunchAttribute attr[1];
                    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
                    attr[0].val.programmaticStreamSerializationAllowed = 1;
                    cudaLaunchConfig_t cfg = {};
                    cfg.gridDim = dim3((unsigned)(sms * per_sm));
                    cfg.blockDim = dim3(THREADS);
                    cfg.stream = stream;
                    cfg.attrs = attr;
                    cfg.numAttrs = (unsigned)pdl;
                    ok = check(cudaLaunchKernelEx(&cfg, read_kernel, (const uint4 *)bufs[l][j],
                                                  PROJECTION_BYTES[j] / 16, sink, pdl),
                               "read_kernel launch");
                }
            ok = check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture") && ok;
            ok = ok && check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
            double us = ok ? time_us(stream, [&] { return cudaGraphLaunch(exec, stream); },
                                     "cudaGraphLaunch")
                           : -1.0;
            if (exec != nullptr)
                cudaGraphExecDestroy(exec);
            if (graph != nullptr)
                cudaGraphDestroy(graph);
            if (us < 0.0)
                return false;
            printf("  %d blocks an SM, %-28s %9.1f us  %6.0f GB/s\n", per_sm,
                   pdl ? "programmatic launches:" : "plain launches:", us, total / us * 1e-3);
        }
    return true;
}

/* One 2 GiB read, by registers and by bulk-copy rings; false on an error. */
bool single(cudaStream_t stream, char *w, unsigned *sink, int sms, int optin)
{
    printf("one read of %.2f GB:\n", (double)SINGLE_BYTES * 1e-9);
    for (int per_sm : {2, 4, 8}) {
        double us = time_us(stream, [&] {
            read_kernel<<<sms * per_sm, THREADS, 0, stream>>>((const uint4 *)w,
                                                              SINGLE_BYTES / 16, sink, 0);
            return cudaGetLastError();
        }, "read_kernel");
        if (us < 0.0)
            return false;
        printf("  16-byte loads, %d blocks an SM: %30.0f GB/s\n", per_sm,
               (double)SINGLE_BYTES / us * 1e-3);
    }
    for (int warps : {4, 8})
        for (int chunk : {2048, 4096, 8192, 16384})
            for (int in_flight_kb : {64, 128}) {
                const int slots = in_flight_kb * 1024 / (warps * chunk);
                const size_t smem = 4096 + (size_t)warps * slots * chunk;
                if (slots < 2 || slots > 16 || smem > (size_t)optin)
                    continue;
                /* each warp reads whole chunks of its equal share: what bulk_kernel reads */
                const size_t n_warps = (size_t)sms * warps;
                const double read = (double)(SINGLE_BYTES / n_warps / chunk * chunk * n_warps);
                double us = time_us(stream, [&] {
                    bulk_kernel<<<sms, warps * 32, smem, stream>>>(w, SINGLE_BYTES, chunk, slots,
                                                                   sink);
                    return cudaGetLastError();
                }, "bulk_kernel");
                if (us < 0.0)
                    return false;
                printf("  bulk copies, %2d warps, %5d-byte chunks x %2d (%3d KB an SM): %6.0f GB/s\n",
                       warps, chunk, slots, in_flight_kb, read / us * 1e-3);
            }
    return true;
}

} // namespace

int main(int argc, char **argv)
{
    int device = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
            device = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: gpu_read_floor [--device N]\n");
            return 2;
        }
    }
    cudaDeviceProp prop;
    if (!check(cudaSetDevice(device), "cudaSetDevice") ||
        !check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"))
        return 1;
    if (prop.major < 9) {
        fprintf(stderr, "gpu_read_floor: %s is compute capability %d.%d; needs 9.0\n", prop.name,
                prop.major, prop.minor);
        return 1;
    }
    printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
    cudaStream_t stream = nullptr;
    unsigned *sink = nullptr;
    char *bufs[LAYERS][4] = {};
    char *single_buf = nullptr;
    bool ok = check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate") &&
              check(cudaMalloc(&sink, 4), "cudaMalloc") &&
              check(cudaFuncSetAttribute(bulk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)prop.sharedMemPerBlockOptin),
                    "cudaFuncSetAttribute");
    for (int l = 0; ok && l < LAYERS; l++)
        for (int j = 0; ok && j < 4; j++)
            ok = check(cudaMalloc(&bufs[l][j], PROJECTION_BYTES[j]), "cudaMalloc (chain)") &&
                 check(cudaMemset(bufs[l][j], 1, PROJECTION_BYTES[j]), "cudaMemset");
    ok = ok && chain(stream, bufs, sink, prop.multiProcessorCount);
    for (int l = 0; l < LAYERS; l++)
        for (int j = 0; j < 4; j++)
            if (bufs[l][j] != nullptr)
                cudaFree(bufs[l][j]);
    ok = ok && check(cudaMalloc(&single_buf, SINGLE_BYTES), "cudaMalloc (single)") &&
         check(cudaMemset(single_buf, 1, SINGLE_BYTES), "cudaMemset") &&
         single(stream, single_buf, sink, prop.multiProcessorCount,
                (int)prop.sharedMemPerBlockOptin);
    if (single_buf != nullptr)
        cudaFree(single_buf);
    if (sink != nullptr)
        cudaFree(sink);
    if (stream != nullptr)
        cudaStreamDestroy(stream);
    return ok ? 0 : 1;
}
