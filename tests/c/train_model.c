/* train_model: train an exported Neurenix training step through its C API (no Python).
 *
 *   train_model DIR STEPS LOSSES.bin IN_0.bin ... IN_n-1.bin
 *               [--fail BAD_0.bin ... BAD_n-1.bin] [--tensor NAME OUT.bin]...
 *
 * Prints the model's tensors (one line each: "tensor", index, name, dtype, shape, bytes) and
 * "training T" (NX_MODEL_TRAINING), reads each input from its raw file (C order,
 * little-endian; the size must match), runs the model STEPS times on them and writes output 0
 * of every run, one after the other, to LOSSES.bin.  With --fail, one more run on the BAD
 * inputs must fail: it prints "failed: " and nx_last_error(), and checks that nx_model_steps
 * and every tensor's data are what they were before that run.  Then it writes each named
 * tensor's current values (nx_model_tensor_data) to its file and prints "steps S".
 * Exit status 0 on success, 2 with nx_last_error() on stderr when the C API reports an error,
 * 3 when the --fail run succeeded or changed the model, 1 on usage or I/O errors.
 * Built by tests/test_export_capi_training.py: cc train_model.c -I DIR DIR/model.so
 * -Wl,-rpath,DIR.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static int write_all(const char* path, const void* data, size_t bytes) {
    FILE* f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, bytes, f) == bytes;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* The n inputs named by paths, or NULL (after a message). */
static const void** read_inputs(const nx_model* model, char** paths, int n) {
    const void** inputs = calloc((size_t)n + 1, sizeof *inputs);
    for (int i = 0; inputs && i < n; ++i) {
        inputs[i] = read_all(paths[i], nx_model_input_bytes(model, i));
        if (!inputs[i]) {
            fprintf(stderr, "%s: cannot read %zu bytes\n", paths[i],
                    nx_model_input_bytes(model, i));
            return NULL;
        }
    }
    return inputs;
}

static void free_inputs(const void** inputs, int n) {
    for (int i = 0; inputs && i < n; ++i) free((void*)inputs[i]);
    free(inputs);
}

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: train_model DIR STEPS LOSSES INPUTS... [--fail INPUTS...] "
                        "[--tensor NAME FILE]...\n");
        return 1;
    }
    nx_model* model = nx_model_load(argv[1]);
    if (!model) {
        fprintf(stderr, "nx_model_load: %s\n", nx_last_error());
        return 2;
    }
    int steps = atoi(argv[2]);
    int n_in = nx_model_num_inputs(model), n_out = nx_model_num_outputs(model);
    int n_tensors = nx_model_num_tensors(model);
    if (n_in != NX_MODEL_NUM_INPUTS || n_out != NX_MODEL_NUM_OUTPUTS || n_out < 1 ||
        n_tensors < 0 || steps < 0) {
        fprintf(stderr, "the counts disagree with model.h, or no output 0, or STEPS < 0\n");
        return 1;
    }
    /* the arguments after the inputs: --fail and --tensor */
    int arg = 4 + n_in, fail_at = 0;
    if (argc < arg) {
        fprintf(stderr, "expected %d input files\n", n_in);
        return 1;
    }
    if (arg < argc && strcmp(argv[arg], "--fail") == 0) {
        fail_at = arg + 1;
        arg += 1 + n_in;
    }
    int first_tensor = arg;
    for (; arg < argc; arg += 3) {
        if (arg + 2 >= argc || strcmp(argv[arg], "--tensor") != 0) {
            fprintf(stderr, "expected --tensor NAME FILE at argument %d\n", arg);
            return 1;
        }
    }
    printf("training %d\n", NX_MODEL_TRAINING);
    for (int t = 0; t < n_tensors; ++t) {
        const int64_t* shape = nx_model_tensor_shape(model, t);
        int rank = nx_model_tensor_rank(model, t);
        printf("tensor %d %s %s [", t, nx_model_tensor_name(model, t),
               nx_dtype_name(nx_model_tensor_dtype(model, t)));
        for (int d = 0; d < rank; ++d) printf(d ? ",%lld" : "%lld", (long long)shape[d]);
        printf("] %zu\n", nx_model_tensor_bytes(model, t));
        if (nx_model_find_tensor(model, nx_model_tensor_name(model, t)) != t) {
            fprintf(stderr, "nx_model_find_tensor does not find tensor %d\n", t);
            return 1;
        }
    }
    if (nx_model_tensor_data(model, n_tensors) != NULL || nx_last_error()[0] == 0 ||
        nx_model_find_tensor(model, "no such tensor") != -1 ||
        strstr(nx_last_error(), "no such tensor") == NULL || nx_model_steps(model) != 0) {
        fprintf(stderr, "a tensor out of range or absent was not reported, or steps != 0\n");
        return 1;
    }

    const void** inputs = read_inputs(model, argv + 4, n_in);
    if (!inputs) return 1;
    void** outputs = calloc((size_t)n_out + 1, sizeof *outputs);
    for (int i = 0; i < n_out; ++i) outputs[i] = malloc(nx_model_output_bytes(model, i) + 1);
    size_t loss_bytes = nx_model_output_bytes(model, 0);
    unsigned char* losses = malloc(loss_bytes * (size_t)steps + 1);
    for (int s = 0; s < steps; ++s) {
        if (nx_model_run(model, inputs, outputs) != 0) {
            fprintf(stderr, "nx_model_run (step %d): %s\n", s, nx_last_error());
            return 2;
        }
        memcpy(losses + loss_bytes * (size_t)s, outputs[0], loss_bytes);
        if (nx_model_steps(model) != s + 1) {
            fprintf(stderr, "nx_model_steps is %lld after %d runs\n",
                    (long long)nx_model_steps(model), s + 1);
            return 1;
        }
    }
    if (write_all(argv[3], losses, loss_bytes * (size_t)steps) != 0) {
        fprintf(stderr, "%s: cannot write\n", argv[3]);
        return 1;
    }

    if (fail_at) {
        const void** bad = read_inputs(model, argv + fail_at, n_in);
        if (!bad) return 1;
        void** before = calloc((size_t)n_tensors + 1, sizeof *before);
        for (int t = 0; t < n_tensors; ++t) {
            size_t bytes = nx_model_tensor_bytes(model, t);
            before[t] = malloc(bytes + 1);
            memcpy(before[t], nx_model_tensor_data(model, t), bytes);
        }
        if (nx_model_run(model, bad, outputs) == 0) {
            fprintf(stderr, "the --fail run succeeded\n");
            return 3;
        }
        printf("failed: %s\n", nx_last_error());
        if (nx_model_steps(model) != steps) {
            fprintf(stderr, "nx_model_steps changed to %lld by the failed run\n",
                    (long long)nx_model_steps(model));
            return 3;
        }
        for (int t = 0; t < n_tensors; ++t) {
            if (memcmp(before[t], nx_model_tensor_data(model, t),
                       nx_model_tensor_bytes(model, t)) != 0) {
                fprintf(stderr, "the failed run changed tensor %s\n",
                        nx_model_tensor_name(model, t));
                return 3;
            }
            free(before[t]);
        }
        free(before);
        free_inputs(bad, n_in);
    }

    for (arg = first_tensor; arg < argc; arg += 3) {
        int t = nx_model_find_tensor(model, argv[arg + 1]);
        if (t < 0) {
            fprintf(stderr, "nx_model_find_tensor: %s\n", nx_last_error());
            return 2;
        }
        if (write_all(argv[arg + 2], nx_model_tensor_data(model, t),
                      nx_model_tensor_bytes(model, t)) != 0) {
            fprintf(stderr, "%s: cannot write\n", argv[arg + 2]);
            return 1;
        }
    }
    printf("steps %lld\n", (long long)nx_model_steps(model));
    for (int i = 0; i < n_out; ++i) free(outputs[i]);
    free(outputs);
    free(losses);
    free_inputs(inputs, n_in);
    nx_model_free(model);
    return 0;
}
