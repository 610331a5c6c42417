// Prefetch hints over the 64-byte lines that runs of floats touch, for the CKernels sources
// (portable: __builtin_prefetch is a no-op where the CPU has no such hints).
#ifndef FWP_PREFETCH_H
#define FWP_PREFETCH_H

// Where a hint asks a line to go: into L1 or L2 to be read, or (into L1) to be written.
enum { FWP_READ_L1, FWP_READ_L2, FWP_WRITE };

// One hint per line that the n floats from p touch, from the line holding the first.
static inline __attribute__((always_inline)) void fwp_prefetch_lines(const float *p, long n, int how) {
    if (n <= 0) return;
    const char *line = (const char *)((unsigned long)p & ~63UL), *end = (const char *)(p + n);
    for (; line < end; line += 64) {
        if (how == FWP_WRITE)
            __builtin_prefetch(line, 1, 3);
        else if (how == FWP_READ_L2)
            __builtin_prefetch(line, 0, 2);
        else
            __builtin_prefetch(line, 0, 3);
    }
}

// The same for `rows` rows of `width` floats, `stride` floats apart.
static inline __attribute__((always_inline)) void fwp_prefetch_row_lines(const float *p, long stride, long rows,
                                                                          long width, int how) {
    for (long r = 0; r < rows; r++) fwp_prefetch_lines(p + r * stride, width, how);
}

#endif
