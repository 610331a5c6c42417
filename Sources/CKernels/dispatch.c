// The one place where fwp decides which kernels may run: the CPU's vector extensions and the
// FWP_* switches, read once per process into one record that every kernel family (C and Swift,
// through FWPCore's KernelDispatch) consults. docs/PERFORMANCE.md lists the switches.
#include "fwp_dispatch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static fwp_dispatch_record record;
static pthread_once_t record_once = PTHREAD_ONCE_INIT;

// The variable is set to exactly `value`.
static int env_is(const char *name, const char *value) {
    const char *v = getenv(name);
    return v != NULL && strcmp(v, value) == 0;
}

#if defined(__x86_64__)
static int cpu_vector_level(void) {
    __builtin_cpu_init();
    // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0).
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return 3;
    if (avx2) return 2;
    if (__builtin_cpu_supports("avx")) return 1;
    return 0;
}
#else
static int cpu_vector_level(void) { return 0; }
#endif

static void read_record(void) {
    int level = cpu_vector_level();
    int avx512 = level >= 3 && !env_is("FWP_AVX512", "0");
    record.vector_level = level;
    record.avx512 = avx512;
    record.small_gemm = level >= 2 && !env_is("FWP_SMALL_GEMM", "0");
    record.dense_gemm = avx512 && !env_is("FWP_DENSE_GEMM", "0");
    record.vector_kernels = level >= 2 && !env_is("FWP_VECTOR_KERNELS", "0");
    record.amx_requested = env_is("FWP_AMX", "1");
    record.poison_uninitialized = env_is("FWP_POISON_UNINITIALIZED", "1");
}

const fwp_dispatch_record *fwp_dispatch(void) {
    pthread_once(&record_once, read_record);
    return &record;
}

int fwp_cpu_vector_level(void) { return fwp_dispatch()->vector_level; }

int fwp_small_sgemm_supported(void) { return fwp_dispatch()->vector_level >= 2; }

int fwp_vector_kernels_supported(void) { return fwp_dispatch()->vector_level >= 2; }

int fwp_small_sgemm_uses_avx512(void) { return fwp_dispatch()->avx512; }

int fwp_dense_sgemm_supported(void) { return fwp_dispatch()->vector_level >= 3; }
