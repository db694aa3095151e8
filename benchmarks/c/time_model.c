/* time_model: time an exported Neurenix model through its C API (benchmarks/export.py).
 *
 *   time_model DIR RUNS WARMUP [IN_0.bin ... IN_n-1.bin]
 *
 * Loads the model (nx_model_load), reads each input from its raw file (C order; the size
 * must match) or, without files, fills float32 inputs with a fixed pseudo-random pattern in
 * [-1, 1) (others with zeros), runs it once (the first run), then WARMUP runs, then RUNS
 * timed runs, each timed alone with clock_gettime(CLOCK_MONOTONIC).  Prints one line of JSON:
 * {"load_ns": ..., "first_run_ns": ..., "median_ns": ..., "min_ns": ..., "runs": ...,
 *  "sum": ...} (sum: of the first output's values when it is float32, so the caller can check
 * the result and nothing is optimised away).  RUNS 0 measures the cold start only: load and
 * first run.  Exit status 0 on success, 2 with nx_last_error() on stderr when the C API
 * reports an error, 1 on usage or I/O errors.
 * Built by benchmarks/export.py: cc -O2 time_model.c -I DIR DIR/model.so -Wl,-rpath,DIR.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void* read_all(const char* path, size_t want) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char* data = malloc(want ? want : 1);
    size_t got = data ? fread(data, 1, want, f) : 0;
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (got != want || extra) {
        free(data);
        return NULL;
    }
    return data;
}

static int compare(const void* a, const void* b) {
    int64_t x = *(const int64_t*)a, y = *(const int64_t*)b;
    return (x > y) - (x < y);
}

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: time_model DIR RUNS WARMUP [INPUT FILES...]\n");
        return 1;
    }
    long runs = strtol(argv[2], NULL, 10), warmup = strtol(argv[3], NULL, 10);
    if (runs < 0 || warmup < 0) {
        fprintf(stderr, "RUNS and WARMUP must be >= 0\n");
        return 1;
    }
    int64_t t0 = now_ns();
    nx_model* model = nx_model_load(argv[1]);
    int64_t t1 = now_ns();
    if (!model) {
        fprintf(stderr, "nx_model_load: %s\n", nx_last_error());
        return 2;
    }
    int n_in = nx_model_num_inputs(model), n_out = nx_model_num_outputs(model);
    if (argc != 4 && argc != 4 + n_in) {
        fprintf(stderr, "expected no input files or %d\n", n_in);
        return 1;
    }
    const void** inputs = calloc((size_t)n_in + 1, sizeof *inputs);
    void** outputs = calloc((size_t)n_out + 1, sizeof *outputs);
    uint32_t state = 12345u;
    for (int i = 0; i < n_in; ++i) {
        size_t bytes = nx_model_input_bytes(model, i);
        unsigned char* data = argc > 4 ? read_all(argv[4 + i], bytes) : malloc(bytes ? bytes : 1);
        if (!data) {
            fprintf(stderr, "%s: cannot read %zu bytes\n", argv[4 + i], bytes);
            return 1;
        }
        if (argc == 4 && nx_model_input_dtype(model, i) == NX_FLOAT32) {
            float* f = (float*)data;
            for (size_t k = 0; k < bytes / 4; ++k) {
                state = state * 1664525u + 1013904223u;
                f[k] = (float)(state >> 8) / 8388608.0f - 1.0f;
            }
        } else if (argc == 4) {
            memset(data, 0, bytes);
        }
        inputs[i] = data;
    }
    for (int i = 0; i < n_out; ++i) outputs[i] = malloc(nx_model_output_bytes(model, i) + 1);
    int64_t t2 = now_ns();
    if (nx_model_run(model, inputs, outputs) != 0) {
        fprintf(stderr, "nx_model_run: %s\n", nx_last_error());
        return 2;
    }
    int64_t t3 = now_ns();
    for (long k = 0; k < warmup; ++k) nx_model_run(model, inputs, outputs);
    int64_t* times = malloc(sizeof *times * (size_t)(runs ? runs : 1));
    for (long k = 0; k < runs; ++k) {
        int64_t a = now_ns();
        if (nx_model_run(model, inputs, outputs) != 0) {
            fprintf(stderr, "nx_model_run: %s\n", nx_last_error());
            return 2;
        }
        times[k] = now_ns() - a;
    }
    qsort(times, (size_t)runs, sizeof *times, compare);
    int64_t median = 0, fastest = 0;
    if (runs) {
        median = runs % 2 ? times[runs / 2] : (times[runs / 2 - 1] + times[runs / 2]) / 2;
        fastest = times[0];
    }
    double sum = 0;
    if (nx_model_output_dtype(model, 0) == NX_FLOAT32) {
        const float* out = outputs[0];
        for (size_t k = 0; k < nx_model_output_bytes(model, 0) / sizeof *out; ++k) sum += out[k];
    }
    printf("{\"load_ns\": %lld, \"first_run_ns\": %lld, \"median_ns\": %lld, \"min_ns\": %lld, "
           "\"runs\": %ld, \"sum\": %.9g}\n", (long long)(t1 - t0), (long long)(t3 - t2),
           (long long)median, (long long)fastest, runs, sum);
    for (int i = 0; i < n_in; ++i) free((void*)inputs[i]);
    for (int i = 0; i < n_out; ++i) free(outputs[i]);
    free(inputs);
    free(outputs);
    free(times);
    nx_model_free(model);
    return 0;
}
