/* run_model: load an exported Neurenix model through its C API and run it once.
 *
 *   run_model DIR IN_0.bin ... IN_n-1.bin OUT_0.bin ... OUT_m-1.bin
 *
 * Prints the model's metadata (one line per input and output: kind, index, name, dtype,
 * shape, bytes), reads each input from its raw file (C order, little-endian; the size must
 * match), runs the model and writes each output as raw bytes.  Exit status 0 on success,
 * 2 with nx_last_error() on stderr when the C API reports an error, 1 on usage or I/O errors.
 * Built by tests/test_export.py: cc run_model.c -I DIR DIR/model.so -Wl,-rpath,DIR.
 */
#include <stdio.h>
#include <stdlib.h>

#include "model.h"

static void* read_all(const char* path, size_t want) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    void* data = malloc(want ? want : 1);
    size_t got = data ? fread(data, 1, want, f) : 0;
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (got != want || extra) {
        free(data);
        return NULL;
    }
    return data;
}

static void describe(const char* kind, int i, const char* name, int dtype, int rank,
                     const int64_t* shape, size_t bytes) {
    printf("%s %d %s %s [", kind, i, name, nx_dtype_name(dtype));
    for (int d = 0; d < rank; ++d) printf(d ? ",%lld" : "%lld", (long long)shape[d]);
    printf("] %zu\n", bytes);
}

int main(int argc, char** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: run_model DIR INPUTS... OUTPUTS...\n");
        return 1;
    }
    nx_model* model = nx_model_load(argv[1]);
    if (!model) {
        fprintf(stderr, "nx_model_load: %s\n", nx_last_error());
        return 2;
    }
    int n_in = nx_model_num_inputs(model), n_out = nx_model_num_outputs(model);
    if (n_in != NX_MODEL_NUM_INPUTS || n_out != NX_MODEL_NUM_OUTPUTS) {
        fprintf(stderr, "the counts disagree with model.h\n");
        return 1;
    }
    if (argc != 2 + n_in + n_out) {
        fprintf(stderr, "expected %d input and %d output files\n", n_in, n_out);
        return 1;
    }
    for (int i = 0; i < n_in; ++i)
        describe("input", i, nx_model_input_name(model, i), nx_model_input_dtype(model, i),
                 nx_model_input_rank(model, i), nx_model_input_shape(model, i),
                 nx_model_input_bytes(model, i));
    for (int i = 0; i < n_out; ++i)
        describe("output", i, nx_model_output_name(model, i), nx_model_output_dtype(model, i),
                 nx_model_output_rank(model, i), nx_model_output_shape(model, i),
                 nx_model_output_bytes(model, i));
    if (nx_model_input_name(model, n_in) != NULL || nx_last_error()[0] == 0) {
        fprintf(stderr, "an index out of range was not reported\n");
        return 1;
    }
    const void** inputs = calloc((size_t)n_in + 1, sizeof *inputs);
    void** outputs = calloc((size_t)n_out + 1, sizeof *outputs);
    for (int i = 0; i < n_in; ++i) {
        inputs[i] = read_all(argv[2 + i], nx_model_input_bytes(model, i));
        if (!inputs[i]) {
            fprintf(stderr, "%s: cannot read %zu bytes\n", argv[2 + i],
                    nx_model_input_bytes(model, i));
            return 1;
        }
    }
    for (int i = 0; i < n_out; ++i) outputs[i] = malloc(nx_model_output_bytes(model, i) + 1);
    if (nx_model_run(model, inputs, outputs) != 0) {
        fprintf(stderr, "nx_model_run: %s\n", nx_last_error());
        return 2;
    }
    for (int i = 0; i < n_out; ++i) {
        FILE* f = fopen(argv[2 + n_in + i], "wb");
        size_t bytes = nx_model_output_bytes(model, i);
        if (!f || fwrite(outputs[i], 1, bytes, f) != bytes || fclose(f) != 0) {
            fprintf(stderr, "%s: cannot write\n", argv[2 + n_in + i]);
            return 1;
        }
        free(outputs[i]);
    }
    for (int i = 0; i < n_in; ++i) free((void*)inputs[i]);
    free(inputs);
    free(outputs);
    nx_model_free(model);
    return 0;
}
