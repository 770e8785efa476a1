// Memory read bandwidth of this machine: the floor under a decode step, which reads every
// weight once. Sums a 1 GiB f32 array with AVX-512 loads on OpenMP threads, four times.
// With HUGE_PAGES=1 the array asks for transparent 2 MB pages (madvise) before it is touched:
// where the kernel's THP mode is "madvise", the difference is what page walks cost.
//
//   gcc -O2 -mavx512f -fopenmp benches/read_bandwidth.c -o /tmp/read_bandwidth
//   OMP_NUM_THREADS=2 /tmp/read_bandwidth; OMP_NUM_THREADS=1 /tmp/read_bandwidth
//   HUGE_PAGES=1 OMP_NUM_THREADS=2 /tmp/read_bandwidth
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

int main(void) {
    size_t n = (size_t)1 << 28;
    float *a = aligned_alloc(1 << 21, n * sizeof(float));
    if (getenv("HUGE_PAGES") && madvise(a, n * sizeof(float), MADV_HUGEPAGE) != 0)
        perror("madvise");
    memset(a, 0, n * sizeof(float));
    for (int rep = 0; rep < 4; rep++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        float total = 0;
#pragma omp parallel reduction(+ : total)
        {
            __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
#pragma omp for
            for (size_t i = 0; i < n; i += 64) {
                s0 = _mm512_add_ps(s0, _mm512_load_ps(a + i));
                s1 = _mm512_add_ps(s1, _mm512_load_ps(a + i + 16));
                s2 = _mm512_add_ps(s2, _mm512_load_ps(a + i + 32));
                s3 = _mm512_add_ps(s3, _mm512_load_ps(a + i + 48));
            }
            total += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
        printf("%.1f GB/s (sum %g)\n", n * sizeof(float) / s / 1e9, total);
    }
    free(a);
    return 0;
}
