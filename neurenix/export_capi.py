"""The C API of an exported CPU model: `model.h` and `model.c` (compiled into `model.so`).

`model.h` is the same for every model but for its NX_MODEL_* macros; `model.c` is a fixed
runtime (error reporting, a small strict safetensors reader, load/run/free, metadata queries)
after tables generated from the program: the model's inputs and outputs, the tensors it reads
from `weights.safetensors`, the entry function's argument order and the arena size.  The
entry function comes from the LLVM object linked beside it; passed a NULL thread pool it runs
serially in the caller's thread.  docs/deploy/c.md is the user's guide.

A training artifact (artifact format 2, `export(..., freeze=False)`) adds state tensors (read
from the weights file like the others; after every successful run each takes its new value,
which the program wrote into a runtime-owned buffer: the two buffers are swapped), value
checks (0-d values the program computes, compared with bounds before anything is committed:
`CCheck`) and a seed input (the initial seed plus the number of successful runs).

A dynamic-batch artifact (`export(..., dynamic_batch=MAX)`) holds two programs: one with the
batch size as its dynamic size (the entry's `sizes` argument), serving batches 2..MAX, and a
static one for batch 1 (`CProgram`); `nx_model_run_batch` picks one per call.  A tensor
dimension that depends on the batch is a polynomial in it (`CTensor.shape` holds a
`runtime.sizes.Poly`): the tables give its coefficients, the queries evaluate them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from neurenix.runtime.sizes import Poly, Size, size_value

DTYPE_CODES = {"bool": 0, "uint8": 1, "int8": 2, "int16": 3, "uint16": 4, "float16": 5,
               "int32": 6, "uint32": 7, "float32": 8, "float64": 9, "int64": 10, "uint64": 11}
"""`enum nx_dtype` of model.h (the order of SAFETENSORS_NAMES below)."""
SAFETENSORS_NAMES = ("BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "F64",
                     "I64", "U64")
MAX_RANK = 8
BATCH_SYMBOL = "batch"
"""The dynamic size of a dynamic-batch artifact (the leading dimension of every input)."""
POLY_TERMS = 4
"""A batch-dependent dimension is c0 + c1*b + c2*b**2 + c3*b**3 in the C tables."""


@dataclass(frozen=True)
class CTensor:
    """A tensor the C API knows: its name, dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[Size, ...]


@dataclass(frozen=True)
class CCheck:
    """A range check after every run (docs/deploy/README.md, manifest "checks"): check values
    `lo` and `hi` (indices of the entry's "check" arguments: 0-d values of `dtype`, the minimum
    and the maximum of some tensor) must satisfy low <= lo and hi < high (hi <= high with
    `high_inclusive`), compared exactly (an int64 value with a float bound too; NaN never
    fails).  Otherwise the run fails with `message`, its "{}" replaced by the offending value
    as Python's str() writes it."""

    lo: int
    hi: int
    dtype: str
    low: float | int
    high: float | int
    high_inclusive: bool
    message: str


@dataclass(frozen=True)
class CProgram:
    """One more program of a dynamic-batch artifact (`source(..., batch1=...)`): its entry
    symbol, the entry's argument order (as `source`'s `args`), its repeated outputs
    (`out_slot`) and value checks, and whether its entry takes the batch size (`sized`)."""

    entry: str
    args: list[tuple[str, int]]
    out_slot: list[int]
    checks: list[CCheck] = field(default_factory=list)
    sized: bool = False


HEADER = r"""/* model.h: the C API of a model exported by neurenix.export (target cpu).
 *
 * Link with model.so (built beside this file).  Every function is thread-safe except that
 * one nx_model runs one call at a time (it owns one scratch arena): use one model per thread
 * to run in parallel.  Errors: a NULL or negative return, and nx_last_error() (per thread)
 * says why.  Arrays are C-contiguous, little-endian, of the dtype and shape the queries
 * report; output buffers must not overlap inputs.  See docs/deploy/c.md.
 *
 * NX_MODEL_TRAINING is 1 for a training artifact (exported with freeze=False: the program is
 * a training step).  Its state (parameters, optimizer state) is held by the nx_model, loaded
 * from weights.safetensors: every successful nx_model_run updates it in place, and the
 * current values are read with nx_model_tensor_data (by index; nx_model_find_tensor gives the
 * index of a name such as "0.weight").  A run whose value checks fail (a class index out of
 * range, ...) returns -1 with the eager error's message, and changes no state.
 *
 * NX_MODEL_MAX_BATCH is MAX for a model exported with dynamic_batch=MAX (0: fixed shapes).
 * Such a model takes any batch size from 1 to MAX at run time: the leading dimension of
 * every input.  Run it with nx_model_run_batch; the plain shape queries give -1 for a
 * dimension that depends on the batch and the _bytes queries the bytes at batch MAX (enough
 * for every batch); the _at queries give them for one batch.
 */
#ifndef NX_MODEL_H
#define NX_MODEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

%(macros)s

typedef struct nx_model nx_model;

/* Element types (safetensors names: BOOL U8 I8 I16 U16 F16 I32 U32 F32 F64 I64 U64). */
enum nx_dtype {
    NX_BOOL = 0, NX_UINT8 = 1, NX_INT8 = 2, NX_INT16 = 3, NX_UINT16 = 4, NX_FLOAT16 = 5,
    NX_INT32 = 6, NX_UINT32 = 7, NX_FLOAT32 = 8, NX_FLOAT64 = 9, NX_INT64 = 10, NX_UINT64 = 11
};

/* Load the model whose artifact directory is `dir` (reads dir/weights.safetensors).
 * NULL on error. */
nx_model* nx_model_load(const char* dir);

/* Run the model once: inputs[i] points to input i, outputs[i] to a buffer of
 * nx_model_output_bytes(model, i) bytes.  0 on success, -1 on error.  A training artifact
 * then commits the new state (and counts the run in nx_model_steps); when a value check
 * fails it returns -1 with the check's message, commits nothing and leaves the outputs'
 * contents unspecified. */
int nx_model_run(nx_model* model, const void* const* inputs, void* const* outputs);

/* The error code of a batch size outside 1..nx_model_max_batch() (or of a model with fixed
 * shapes) in nx_model_run_batch. */
#define NX_ERROR_BATCH (-2)

/* Run a dynamic-batch model once at batch size `batch` (1..nx_model_max_batch(model)):
 * inputs[i] holds nx_model_input_bytes_at(model, i, batch) bytes, outputs[i] has room for
 * nx_model_output_bytes_at(model, i, batch).  0 on success, NX_ERROR_BATCH for a batch
 * outside the range or a model of fixed shapes (use nx_model_run), -1 on another error. */
int nx_model_run_batch(nx_model* model, int64_t batch, const void* const* inputs,
                       void* const* outputs);

/* The largest batch size of a dynamic-batch model; 0 for a model of fixed shapes. */
int64_t nx_model_max_batch(const nx_model* model);

/* The shape (rank dimensions written to shape: rank or -1 returned) and bytes of input or
 * output i at batch size `batch`; -1 or 0 (and the error) for a model of fixed shapes or a
 * batch outside 1..nx_model_max_batch(). */
int nx_model_input_shape_at(const nx_model* model, int i, int64_t batch, int64_t* shape);
int nx_model_output_shape_at(const nx_model* model, int i, int64_t batch, int64_t* shape);
size_t nx_model_input_bytes_at(const nx_model* model, int i, int64_t batch);
size_t nx_model_output_bytes_at(const nx_model* model, int i, int64_t batch);

/* Free a loaded model (NULL is ignored). */
void nx_model_free(nx_model* model);

/* The last error of this thread ("" when none). */
const char* nx_last_error(void);

/* Metadata.  An index out of range gives -1, NULL or 0 and sets the error. */
int nx_model_num_inputs(const nx_model* model);
int nx_model_num_outputs(const nx_model* model);
const char* nx_model_input_name(const nx_model* model, int i);
int nx_model_input_rank(const nx_model* model, int i);
const int64_t* nx_model_input_shape(const nx_model* model, int i);
int nx_model_input_dtype(const nx_model* model, int i);
size_t nx_model_input_bytes(const nx_model* model, int i);
const char* nx_model_output_name(const nx_model* model, int i);
int nx_model_output_rank(const nx_model* model, int i);
const int64_t* nx_model_output_shape(const nx_model* model, int i);
int nx_model_output_dtype(const nx_model* model, int i);
size_t nx_model_output_bytes(const nx_model* model, int i);

/* The tensors read from weights.safetensors (parameters, buffers, optimizer state; the
 * program's constants, "const:...", and Python numbers read at export, "host:..."), by their
 * names in that file. */
int nx_model_num_tensors(const nx_model* model);
const char* nx_model_tensor_name(const nx_model* model, int i);
int nx_model_tensor_rank(const nx_model* model, int i);
const int64_t* nx_model_tensor_shape(const nx_model* model, int i);
int nx_model_tensor_dtype(const nx_model* model, int i);
size_t nx_model_tensor_bytes(const nx_model* model, int i);
/* Tensor i's current values (nx_model_tensor_bytes bytes): for a training artifact's state,
 * its value after the successful runs so far (the trained weights).  Valid until the next
 * nx_model_run or nx_model_free of this model: copy what you keep. */
const void* nx_model_tensor_data(const nx_model* model, int i);
/* The index of the tensor named `name`; -1 (and the error) when the model has none. */
int nx_model_find_tensor(const nx_model* model, const char* name);
/* How many runs of this model have succeeded (training: the number of steps taken). */
int64_t nx_model_steps(const nx_model* model);

/* "float32", "int64", ... for an enum nx_dtype value; NULL for another value. */
const char* nx_dtype_name(int dtype);

#ifdef __cplusplus
}
#endif

#endif /* NX_MODEL_H */
"""

RUNTIME = r"""
/* ---- the fixed runtime ------------------------------------------------------------------ */

static _Thread_local char nx_error[1024];

static void nx_fail(const char* format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(nx_error, sizeof nx_error, format, args);
    va_end(args);
}

const char* nx_last_error(void) { return nx_error; }

static const char* const NX_DTYPE_NAMES[] = {
    "bool", "uint8", "int8", "int16", "uint16", "float16", "int32", "uint32", "float32",
    "float64", "int64", "uint64"};
static const char* const NX_ST_DTYPES[] = {
    "BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "F64", "I64", "U64"};

static const size_t NX_ITEMSIZE[] = {1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8};

const char* nx_dtype_name(int dtype) {
    return dtype >= 0 && dtype < 12 ? NX_DTYPE_NAMES[dtype] : NULL;
}

struct nx_model {
    void* tensors[NX_NUM_TENSORS + 1];   /* current values (a state's: after the last step) */
    void* state_out[NX_NUM_STATES + 1];  /* where the program writes each state's next value */
    uint64_t check_values[NX_NUM_CHECK_VALUES + 1]; /* 0-d values, at most 8 bytes each */
    int64_t seed;
    int64_t steps;
    void* arena;
    void* args[NX_NUM_ARGS + 1];
};

static void* nx_aligned(size_t bytes) {
    void* p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    return p;
}

void nx_model_free(nx_model* model) {
    if (!model) return;
    for (int t = 0; t < NX_NUM_TENSORS; ++t) free(model->tensors[t]);
    for (int s = 0; s < NX_NUM_STATES; ++s) free(model->state_out[s]);
    free(model->arena);
    free(model);
}

static unsigned char* nx_read_file(const char* path, size_t* size) {
    FILE* f = fopen(path, "rb");
    if (!f) {
        nx_fail("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) {
        nx_fail("%s: cannot read its size", path);
        fclose(f);
        return NULL;
    }
    unsigned char* data = malloc((size_t)n + 1);
    if (!data || fread(data, 1, (size_t)n, f) != (size_t)n) {
        nx_fail("%s: cannot read %ld bytes", path, n);
        free(data);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return data;
}

/* A strict reader of the JSON that safetensors headers use. */
typedef struct {
    const char* p;
    const char* end;
} nx_json;

static void nx_ws(nx_json* j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        ++j->p;
}

static int nx_take(nx_json* j, char c) {
    nx_ws(j);
    if (j->p < j->end && *j->p == c) {
        ++j->p;
        return 1;
    }
    return 0;
}

static int nx_hex4(nx_json* j, unsigned* value) {
    if (j->end - j->p < 4) return 0;
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
        char c = *j->p++;
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *value = v;
    return 1;
}

/* A string into buf (UTF-8, NUL-terminated; buf NULL: skipped); 0 when malformed or longer
 * than cap - 1 bytes. */
static int nx_string(nx_json* j, char* buf, size_t cap) {
    size_t n = 0;
    nx_ws(j);
    if (j->p >= j->end || *j->p != '"') return 0;
    ++j->p;
    while (j->p < j->end && *j->p != '"') {
        unsigned char c = (unsigned char)*j->p++;
        unsigned long code = c;
        int bytes = 1;
        if (c < 0x20) return 0;
        if (c == '\\') {
            if (j->p >= j->end) return 0;
            char e = *j->p++;
            switch (e) {
            case '"': case '\\': case '/': code = (unsigned char)e; break;
            case 'b': code = '\b'; break;
            case 'f': code = '\f'; break;
            case 'n': code = '\n'; break;
            case 'r': code = '\r'; break;
            case 't': code = '\t'; break;
            case 'u': {
                unsigned hi, lo;
                if (!nx_hex4(j, &hi)) return 0;
                code = hi;
                if (hi >= 0xD800 && hi < 0xDC00) {
                    if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') return 0;
                    j->p += 2;
                    if (!nx_hex4(j, &lo) || lo < 0xDC00 || lo >= 0xE000) return 0;
                    code = 0x10000 + ((unsigned long)(hi - 0xD800) << 10) + (lo - 0xDC00);
                } else if (hi >= 0xDC00 && hi < 0xE000) {
                    return 0;
                }
                bytes = code < 0x80 ? 1 : code < 0x800 ? 2 : code < 0x10000 ? 3 : 4;
                break;
            }
            default: return 0;
            }
        }
        if (!buf) continue;
        if (n + (size_t)bytes >= cap) return 0;
        if (c == '\\' && bytes > 1) {
            static const unsigned char lead[] = {0, 0, 0xC0, 0xE0, 0xF0};
            for (int k = bytes - 1; k > 0; --k) {
                buf[n + (size_t)k] = (char)(0x80 | (code & 0x3F));
                code >>= 6;
            }
            buf[n] = (char)(lead[bytes] | code);
            n += (size_t)bytes;
        } else {
            buf[n++] = (char)code;
        }
    }
    if (j->p >= j->end) return 0;
    ++j->p;
    if (buf) buf[n] = 0;
    return 1;
}

static int nx_uint(nx_json* j, uint64_t* out) {
    uint64_t v = 0;
    nx_ws(j);
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        uint64_t d = (uint64_t)(*j->p++ - '0');
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E')) return 0;
    *out = v;
    return 1;
}

static int nx_skip(nx_json* j, int depth) {
    nx_ws(j);
    if (depth > 32 || j->p >= j->end) return 0;
    char c = *j->p;
    if (c == '"') return nx_string(j, NULL, 0);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        ++j->p;
        if (nx_take(j, close)) return 1;
        do {
            if (c == '{' && (!nx_string(j, NULL, 0) || !nx_take(j, ':'))) return 0;
            if (!nx_skip(j, depth + 1)) return 0;
        } while (nx_take(j, ','));
        return nx_take(j, close);
    }
    static const char* const words[] = {"true", "false", "null"};
    for (int k = 0; k < 3; ++k) {
        size_t len = strlen(words[k]);
        if ((size_t)(j->end - j->p) >= len && memcmp(j->p, words[k], len) == 0) {
            j->p += len;
            return 1;
        }
    }
    const char* start = j->p;
    while (j->p < j->end && strchr("+-.eE0123456789", *j->p) && *j->p) ++j->p;
    return j->p > start;
}

/* Read every tensor of NX_TENSORS from the safetensors file `path` into model->tensors. */
static int nx_read_weights(nx_model* model, const char* path) {
    size_t size = 0;
    unsigned char* file = nx_read_file(path, &size);
    if (!file) return -1;
    int ok = -1;
    int found[NX_NUM_TENSORS + 1] = {0};
    char key[1024], field[64], dtype[16];
    if (size < 8) {
        nx_fail("%s: not a safetensors file: %zu bytes", path, size);
        goto done;
    }
    uint64_t header = 0;
    for (int k = 7; k >= 0; --k) header = (header << 8) | file[k];
    if (header > size - 8) {
        nx_fail("%s: header length %llu runs past the file (%zu bytes)", path,
                (unsigned long long)header, size);
        goto done;
    }
    const unsigned char* data = file + 8 + header;
    uint64_t data_size = size - 8 - header;
    nx_json j = {(const char*)file + 8, (const char*)file + 8 + header};
    if (!nx_take(&j, '{')) goto malformed;
    if (!nx_take(&j, '}')) {
        do {
            if (!nx_string(&j, key, sizeof key) || !nx_take(&j, ':')) goto malformed;
            if (strcmp(key, "__metadata__") == 0) {
                if (!nx_skip(&j, 0)) goto malformed;
                continue;
            }
            int64_t shape[NX_MAX_RANK];
            int rank = -1, have_offsets = 0;
            uint64_t begin = 0, end = 0;
            dtype[0] = 0;
            if (!nx_take(&j, '{')) goto malformed;
            if (!nx_take(&j, '}')) {
                do {
                    if (!nx_string(&j, field, sizeof field) || !nx_take(&j, ':'))
                        goto malformed;
                    if (strcmp(field, "dtype") == 0) {
                        if (!nx_string(&j, dtype, sizeof dtype)) goto malformed;
                    } else if (strcmp(field, "shape") == 0) {
                        rank = 0;
                        if (!nx_take(&j, '[')) goto malformed;
                        if (!nx_take(&j, ']')) {
                            do {
                                uint64_t d;
                                if (rank >= NX_MAX_RANK || !nx_uint(&j, &d) || d > INT64_MAX)
                                    goto malformed;
                                shape[rank++] = (int64_t)d;
                            } while (nx_take(&j, ','));
                            if (!nx_take(&j, ']')) goto malformed;
                        }
                    } else if (strcmp(field, "data_offsets") == 0) {
                        if (!nx_take(&j, '[') || !nx_uint(&j, &begin) || !nx_take(&j, ',') ||
                            !nx_uint(&j, &end) || !nx_take(&j, ']'))
                            goto malformed;
                        have_offsets = 1;
                    } else if (!nx_skip(&j, 0)) {
                        goto malformed;
                    }
                } while (nx_take(&j, ','));
                if (!nx_take(&j, '}')) goto malformed;
            }
            int t = 0;
            while (t < NX_NUM_TENSORS && strcmp(NX_TENSORS[t].name, key) != 0) ++t;
            if (t == NX_NUM_TENSORS) continue; /* a tensor this program does not read */
            const nx_info* want = &NX_TENSORS[t];
            if (found[t]) {
                nx_fail("%s: tensor '%s' appears twice", path, key);
                goto done;
            }
            if (strcmp(dtype, NX_ST_DTYPES[want->dtype]) != 0 || rank != want->rank ||
                (rank > 0 && memcmp(shape, want->shape, sizeof(int64_t) * (size_t)rank)) ||
                !have_offsets) {
                nx_fail("%s: tensor '%s' is not %s of the shape the model takes", path, key,
                        NX_ST_DTYPES[want->dtype]);
                goto done;
            }
            if (begin > end || end > data_size || end - begin != want->bytes) {
                nx_fail("%s: tensor '%s' has byte range [%llu, %llu) outside the data "
                        "(%llu bytes) or of the wrong size", path, key,
                        (unsigned long long)begin, (unsigned long long)end,
                        (unsigned long long)data_size);
                goto done;
            }
            model->tensors[t] = nx_aligned(want->bytes);
            if (!model->tensors[t]) {
                nx_fail("%s: out of memory for tensor '%s'", path, key);
                goto done;
            }
            memcpy(model->tensors[t], data + begin, want->bytes);
            found[t] = 1;
        } while (nx_take(&j, ','));
        if (!nx_take(&j, '}')) goto malformed;
    }
    nx_ws(&j);
    if (j.p != j.end) goto malformed;
    for (int t = 0; t < NX_NUM_TENSORS; ++t) {
        if (!found[t]) {
            nx_fail("%s: has no tensor '%s'", path, NX_TENSORS[t].name);
            goto done;
        }
    }
    ok = 0;
    goto done;
malformed:
    nx_fail("%s: not a valid safetensors file: malformed header near byte %ld", path,
            (long)(j.p - (const char*)file));
done:
    free(file);
    return ok;
}

nx_model* nx_model_load(const char* dir) {
    char path[4096];
    nx_error[0] = 0;
    if (!dir) {
        nx_fail("nx_model_load: dir is NULL");
        return NULL;
    }
    int n = snprintf(path, sizeof path, "%s/%s", dir, "weights.safetensors");
    if (n < 0 || (size_t)n >= sizeof path) {
        nx_fail("nx_model_load: the path %s/weights.safetensors is too long", dir);
        return NULL;
    }
    nx_model* model = calloc(1, sizeof *model);
    if (!model) {
        nx_fail("nx_model_load: out of memory");
        return NULL;
    }
    if (nx_read_weights(model, path) != 0) {
        nx_model_free(model);
        return NULL;
    }
    model->arena = nx_aligned(NX_ARENA_BYTES);
    if (!model->arena) {
        nx_fail("nx_model_load: out of memory for the %llu-byte arena",
                (unsigned long long)NX_ARENA_BYTES);
        nx_model_free(model);
        return NULL;
    }
    for (int s = 0; s < NX_NUM_STATES; ++s) {
        size_t bytes = NX_TENSORS[NX_STATES[s]].bytes;
        model->state_out[s] = nx_aligned(bytes);
        if (!model->state_out[s]) {
            nx_fail("nx_model_load: out of memory for the state '%s'",
                    NX_TENSORS[NX_STATES[s]].name);
            nx_model_free(model);
            return NULL;
        }
        memset(model->state_out[s], 0, bytes);
    }
    return model;
}

/* The digits (NUL-terminated) and decimal exponent of `precision` significant digits of
 * a > 0, correctly rounded, moved `step` (-1, 0, +1) units in the last digit; whether they
 * read back as a. */
static int nx_digits(double a, int precision, int step, char* digits, int* exponent) {
    char text[64];
    snprintf(text, sizeof text, "%.*e", precision - 1, a);
    int n = 0;
    const char* p = text;
    for (; *p && *p != 'e' && *p != 'E'; ++p)
        if (*p >= '0' && *p <= '9' && n < 24) digits[n++] = *p;
    digits[n] = 0;
    *exponent = *p ? atoi(p + 1) : 0;
    if (step > 0) {
        int k = n - 1;
        while (k >= 0 && digits[k] == '9') digits[k--] = '0';
        if (k >= 0) {
            ++digits[k];
        } else { /* 99..9 + 1: 100..0, one place up */
            digits[0] = '1';
            ++*exponent;
        }
    } else if (step < 0) {
        int k = n - 1;
        while (k >= 0 && digits[k] == '0') digits[k--] = '9';
        if (k < 0) return 0;
        --digits[k];
        if (digits[0] == '0') { /* 10..0 - 1: 9..9, one place down */
            memmove(digits, digits + 1, (size_t)n);
            --n;
            --*exponent;
            if (n == 0) return 0;
        }
    }
    snprintf(text, sizeof text, "%c%s%se%d", digits[0], localeconv()->decimal_point,
             digits + 1, *exponent);
    return strtod(text, NULL) == a;
}

/* Python's repr() of a double: the shortest digits that read back as v (of those, the
 * nearest), positional when the decimal exponent is in [-4, 16), else scientific. */
static void nx_repr_double(double v, char* out, size_t cap) {
    if (isnan(v)) {
        snprintf(out, cap, "nan");
        return;
    }
    if (isinf(v)) {
        snprintf(out, cap, v < 0 ? "-inf" : "inf");
        return;
    }
    char digits[32];
    int exponent = 0, n;
    double a = fabs(v);
    if (a == 0) {
        snprintf(digits, sizeof digits, "0");
    } else {
        for (int precision = 1; precision <= 17; ++precision) {
            if (nx_digits(a, precision, 0, digits, &exponent)) break;
            char text[64];
            snprintf(text, sizeof text, "%.*e", precision - 1, a);
            if (nx_digits(a, precision, strtod(text, NULL) < a ? 1 : -1, digits, &exponent))
                break;
            if (precision == 17) nx_digits(a, 17, 0, digits, &exponent);
        }
    }
    n = (int)strlen(digits);
    while (n > 1 && digits[n - 1] == '0') --n;
    digits[n] = 0;
    char* o = out;
    char* end = out + cap - 1;
#define NX_PUT(c) do { if (o < end) *o++ = (c); } while (0)
    if (signbit(v)) NX_PUT('-');
    if (exponent < -4 || exponent >= 16) {
        NX_PUT(digits[0]);
        if (n > 1) {
            NX_PUT('.');
            for (int k = 1; k < n; ++k) NX_PUT(digits[k]);
        }
        *o = 0;
        snprintf(o, (size_t)(end - o) + 1, "e%c%02d", exponent < 0 ? '-' : '+',
                 exponent < 0 ? -exponent : exponent);
        return;
    }
    int point = exponent + 1; /* digits before the decimal point */
    if (point <= 0) {
        NX_PUT('0');
        NX_PUT('.');
        for (int k = 0; k < -point; ++k) NX_PUT('0');
        for (int k = 0; k < n; ++k) NX_PUT(digits[k]);
    } else {
        for (int k = 0; k < point; ++k) NX_PUT(k < n ? digits[k] : '0');
        NX_PUT('.');
        if (point >= n) NX_PUT('0');
        for (int k = point; k < n; ++k) NX_PUT(digits[k]);
    }
#undef NX_PUT
    *o = 0;
}

static double nx_half(uint16_t h) {
    int exponent = (h >> 10) & 0x1F;
    double mantissa = (double)(h & 0x3FF);
    double v = exponent == 0    ? ldexp(mantissa, -24)
               : exponent == 31 ? (mantissa != 0 ? NAN : HUGE_VAL)
                                : ldexp(mantissa + 1024.0, exponent - 25);
    return (h & 0x8000) ? -v : v;
}

/* Check value `c` as a number: an integer (signed or uint64) or a double; its text (as
 * Python's str() of the value's item()) into text. */
typedef struct {
    int kind; /* 0: int64 i, 1: uint64 u, 2: double f */
    int64_t i;
    uint64_t u;
    double f;
} nx_number;

static nx_number nx_check_value(const nx_model* model, int c, int dtype, char* text,
                                size_t cap) {
    const void* p = &model->check_values[c];
    nx_number v = {0, 0, 0, 0.0};
    switch (dtype) {
    case NX_BOOL: { uint8_t x; memcpy(&x, p, 1); v.i = x != 0; break; }
    case NX_UINT8: { uint8_t x; memcpy(&x, p, 1); v.i = x; break; }
    case NX_INT8: { int8_t x; memcpy(&x, p, 1); v.i = x; break; }
    case NX_INT16: { int16_t x; memcpy(&x, p, 2); v.i = x; break; }
    case NX_UINT16: { uint16_t x; memcpy(&x, p, 2); v.i = x; break; }
    case NX_INT32: { int32_t x; memcpy(&x, p, 4); v.i = x; break; }
    case NX_UINT32: { uint32_t x; memcpy(&x, p, 4); v.i = x; break; }
    case NX_INT64: { memcpy(&v.i, p, 8); break; }
    case NX_UINT64: { memcpy(&v.u, p, 8); v.kind = 1; break; }
    case NX_FLOAT16: { uint16_t x; memcpy(&x, p, 2); v.f = nx_half(x); v.kind = 2; break; }
    case NX_FLOAT32: { float x; memcpy(&x, p, 4); v.f = x; v.kind = 2; break; }
    default: { memcpy(&v.f, p, 8); v.kind = 2; break; }
    }
    if (dtype == NX_BOOL) snprintf(text, cap, v.i ? "True" : "False");
    else if (v.kind == 0) snprintf(text, cap, "%lld", (long long)v.i);
    else if (v.kind == 1) snprintf(text, cap, "%llu", (unsigned long long)v.u);
    else nx_repr_double(v.f, text, cap);
    return v;
}

/* Whether v fails a bound: below it (low) or at or above it (high; floats: above it, or at
 * it unless inclusive).  Integer bounds were made exact thresholds of the dtype's range. */
static int nx_fails(const nx_check* check, nx_number v, int high) {
    int mode = high ? check->high_mode : check->low_mode;
    if (mode != NX_COMPARE) return mode == NX_ALWAYS;
    if (v.kind == 0) return high ? v.i >= check->high_i : v.i < check->low_i;
    if (v.kind == 1) return high ? v.u >= check->high_u : v.u < check->low_u;
    if (!high) return v.f < check->low_f;
    return check->high_inclusive ? v.f > check->high_f : v.f >= check->high_f;
}

/* The value checks, in order: 0, or -1 with the first failing check's message. */
static int nx_run_checks(const nx_model* model, const nx_program* program) {
    for (int k = 0; k < program->num_checks; ++k) {
        const nx_check* check = &program->checks[k];
        char text[64];
        nx_number v = nx_check_value(model, check->lo, check->dtype, text, sizeof text);
        int failed = nx_fails(check, v, 0);
        if (!failed) {
            v = nx_check_value(model, check->hi, check->dtype, text, sizeof text);
            failed = nx_fails(check, v, 1);
        }
        if (!failed) continue;
        size_t n = 0, len = strlen(text);
        for (const char* m = check->message; *m && n + 1 < sizeof nx_error; ++m) {
            if (m[0] == '{' && m[1] == '}') {
                for (size_t k2 = 0; k2 < len && n + 1 < sizeof nx_error; ++k2)
                    nx_error[n++] = text[k2];
                ++m;
            } else {
                nx_error[n++] = *m;
            }
        }
        nx_error[n] = 0;
        return -1;
    }
    return 0;
}

/* Dimension d of t at batch size `batch` (a static dimension: as it is). */
static int64_t nx_dim_at(const nx_info* t, int d, int64_t batch) {
    if (!t->poly) return t->shape[d];
    const int64_t* c = t->poly + NX_POLY_TERMS * d;
    int64_t value = 0;
    for (int k = NX_POLY_TERMS - 1; k >= 0; --k) value = value * batch + c[k];
    return value;
}

static size_t nx_bytes_at(const nx_info* t, int64_t batch) {
    if (!t->poly) return t->bytes;
    size_t bytes = NX_ITEMSIZE[t->dtype];
    for (int d = 0; d < t->rank; ++d) bytes *= (size_t)nx_dim_at(t, d, batch);
    return bytes;
}

/* Run `program` (batch: its size, for a sized program); `what` names the caller. */
static int nx_run(nx_model* model, const nx_program* program, int64_t batch,
                  const void* const* inputs, void* const* outputs, const char* what) {
    if (!model || (NX_NUM_INPUTS && !inputs) || !outputs) {
        nx_fail("%s: model, inputs and outputs must not be NULL", what);
        return -1;
    }
    for (int i = 0; i < NX_NUM_INPUTS; ++i) {
        if (!inputs[i]) {
            nx_fail("%s: input %d (%s) is NULL", what, i, NX_INPUTS[i].name);
            return -1;
        }
    }
    for (int i = 0; i < NX_NUM_OUTPUTS; ++i) {
        if (!outputs[i]) {
            nx_fail("%s: output %d (%s) is NULL", what, i, NX_OUTPUTS[i].name);
            return -1;
        }
    }
    for (int a = 0; a < program->num_args; ++a) {
        int index = program->args[a].index;
        switch (program->args[a].kind) {
        case NX_ARG_INPUT: model->args[a] = (void*)inputs[index]; break;
        case NX_ARG_OUTPUT: model->args[a] = outputs[program->out_slot[index]]; break;
        case NX_ARG_TENSOR: model->args[a] = model->tensors[index]; break;
        case NX_ARG_STATE_OUT: model->args[a] = model->state_out[index]; break;
        case NX_ARG_CHECK: model->args[a] = &model->check_values[index]; break;
        default: model->args[a] = &model->seed; break;
        }
    }
    model->seed = (int64_t)(NX_SEED + (uint64_t)model->steps);
    if (program->sized) {
        const int64_t sizes[1] = {batch};
        program->sized(model->args, model->arena, NULL, sizes);
    } else {
        program->entry(model->args, model->arena, NULL);
    }
    for (int i = 0; i < NX_NUM_OUTPUTS; ++i)
        if (program->out_slot[i] != i)
            memcpy(outputs[i], outputs[program->out_slot[i]], nx_bytes_at(&NX_OUTPUTS[i], batch));
    if (nx_run_checks(model, program) != 0) return -1;
    for (int s = 0; s < NX_NUM_STATES; ++s) { /* commit: the new values become current */
        void* current = model->tensors[NX_STATES[s]];
        model->tensors[NX_STATES[s]] = model->state_out[s];
        model->state_out[s] = current;
    }
    ++model->steps;
    return 0;
}

int nx_model_run(nx_model* model, const void* const* inputs, void* const* outputs) {
    if (NX_MAX_BATCH != 0) {
        nx_fail("nx_model_run: the model takes its batch size at run time (exported with "
                "dynamic_batch=%lld): call nx_model_run_batch", (long long)NX_MAX_BATCH);
        return -1;
    }
    return nx_run(model, &NX_PROGRAMS[0], 0, inputs, outputs, "nx_model_run");
}

/* Whether `batch` is one the model takes (else the error is set). */
static int nx_batch_ok(int64_t batch, const char* what) {
    if (NX_MAX_BATCH == 0) {
        nx_fail("%s: the model takes fixed shapes (exported without dynamic_batch): use "
                "nx_model_run and the plain queries", what);
        return 0;
    }
    if (batch < 1 || batch > NX_MAX_BATCH) {
        nx_fail("%s: batch size %lld is outside 1..%lld (the model was exported with "
                "dynamic_batch=%lld)", what, (long long)batch, (long long)NX_MAX_BATCH,
                (long long)NX_MAX_BATCH);
        return 0;
    }
    return 1;
}

int nx_model_run_batch(nx_model* model, int64_t batch, const void* const* inputs,
                       void* const* outputs) {
    if (!model) {
        nx_fail("nx_model_run_batch: model is NULL");
        return -1;
    }
    if (!nx_batch_ok(batch, "nx_model_run_batch")) return NX_ERROR_BATCH;
    const nx_program* program = &NX_PROGRAMS[batch == 1 && NX_NUM_PROGRAMS > 1 ? 1 : 0];
    return nx_run(model, program, batch, inputs, outputs, "nx_model_run_batch");
}

int64_t nx_model_max_batch(const nx_model* model) {
    if (!model) {
        nx_fail("nx_model_max_batch: model is NULL");
        return -1;
    }
    return NX_MAX_BATCH;
}

static const nx_info* nx_tensor_at(const nx_model* model, const nx_info* table, int count,
                                   int i, const char* what) {
    if (!model || i < 0 || i >= count) {
        nx_fail("%s %d: no such tensor (the model has %d)", what, i, count);
        return NULL;
    }
    return &table[i];
}

int nx_model_num_inputs(const nx_model* model) { return model ? NX_NUM_INPUTS : -1; }
int nx_model_num_outputs(const nx_model* model) { return model ? NX_NUM_OUTPUTS : -1; }

#define NX_QUERIES(kind, TABLE, COUNT)                                                       \
    const char* nx_model_##kind##_name(const nx_model* model, int i) {                       \
        const nx_info* t = nx_tensor_at(model, TABLE, COUNT, i, #kind);                      \
        return t ? t->name : NULL;                                                           \
    }                                                                                        \
    int nx_model_##kind##_rank(const nx_model* model, int i) {                               \
        const nx_info* t = nx_tensor_at(model, TABLE, COUNT, i, #kind);                      \
        return t ? t->rank : -1;                                                             \
    }                                                                                        \
    const int64_t* nx_model_##kind##_shape(const nx_model* model, int i) {                   \
        const nx_info* t = nx_tensor_at(model, TABLE, COUNT, i, #kind);                      \
        return t ? t->shape : NULL;                                                          \
    }                                                                                        \
    int nx_model_##kind##_dtype(const nx_model* model, int i) {                              \
        const nx_info* t = nx_tensor_at(model, TABLE, COUNT, i, #kind);                      \
        return t ? t->dtype : -1;                                                            \
    }                                                                                        \
    size_t nx_model_##kind##_bytes(const nx_model* model, int i) {                           \
        const nx_info* t = nx_tensor_at(model, TABLE, COUNT, i, #kind);                      \
        return t ? t->bytes : 0;                                                             \
    }

NX_QUERIES(input, NX_INPUTS, NX_NUM_INPUTS)
NX_QUERIES(output, NX_OUTPUTS, NX_NUM_OUTPUTS)

#define NX_SIZED_QUERIES(kind, TABLE, COUNT)                                                 \
    int nx_model_##kind##_shape_at(const nx_model* model, int i, int64_t batch,              \
                                   int64_t* shape) {                                         \
        const nx_info* t = nx_tensor_at(model, TABLE, COUNT, i, #kind);                      \
        if (!t || !nx_batch_ok(batch, "nx_model_" #kind "_shape_at")) return -1;             \
        if (!shape) {                                                                        \
            nx_fail("nx_model_" #kind "_shape_at: shape is NULL");                           \
            return -1;                                                                       \
        }                                                                                    \
        for (int d = 0; d < t->rank; ++d) shape[d] = nx_dim_at(t, d, batch);                 \
        return t->rank;                                                                      \
    }                                                                                        \
    size_t nx_model_##kind##_bytes_at(const nx_model* model, int i, int64_t batch) {         \
        const nx_info* t = nx_tensor_at(model, TABLE, COUNT, i, #kind);                      \
        if (!t || !nx_batch_ok(batch, "nx_model_" #kind "_bytes_at")) return 0;              \
        return nx_bytes_at(t, batch);                                                        \
    }

NX_SIZED_QUERIES(input, NX_INPUTS, NX_NUM_INPUTS)
NX_SIZED_QUERIES(output, NX_OUTPUTS, NX_NUM_OUTPUTS)
NX_QUERIES(tensor, NX_TENSORS, NX_NUM_TENSORS)

int nx_model_num_tensors(const nx_model* model) { return model ? NX_NUM_TENSORS : -1; }

const void* nx_model_tensor_data(const nx_model* model, int i) {
    return nx_tensor_at(model, NX_TENSORS, NX_NUM_TENSORS, i, "tensor")
               ? model->tensors[i] : NULL;
}

int nx_model_find_tensor(const nx_model* model, const char* name) {
    if (!model || !name) {
        nx_fail("nx_model_find_tensor: model and name must not be NULL");
        return -1;
    }
    for (int t = 0; t < NX_NUM_TENSORS; ++t)
        if (strcmp(NX_TENSORS[t].name, name) == 0) return t;
    nx_fail("nx_model_find_tensor: the model has no tensor '%s'", name);
    return -1;
}

int64_t nx_model_steps(const nx_model* model) {
    if (!model) {
        nx_fail("nx_model_steps: model is NULL");
        return -1;
    }
    return model->steps;
}
"""

PRELUDE = r"""/* model.c: the C API of an exported model (generated by neurenix.export). */
#define _POSIX_C_SOURCE 200809L
#include "model.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char* name;
    int dtype;
    int rank;
    const int64_t* shape;   /* -1: a dimension that depends on the batch (see poly) */
    size_t bytes;           /* at the largest batch (dynamic batch) */
    const int64_t* poly;    /* NULL, or NX_POLY_TERMS coefficients per dimension */
} nx_info;

enum {
    NX_ARG_INPUT = 0,     /* the caller's input `index` */
    NX_ARG_OUTPUT = 1,    /* the caller's output `index` (NX_OUT_SLOT: repeated outputs) */
    NX_ARG_TENSOR = 2,    /* NX_TENSORS[index]'s current values */
    NX_ARG_STATE_OUT = 3, /* state `index`'s next value (a runtime-owned buffer) */
    NX_ARG_CHECK = 4,     /* check value `index` (0-d, runtime-owned) */
    NX_ARG_SEED = 5       /* the seed: a 0-d int64, NX_SEED + the successful runs so far */
};

typedef struct {
    int kind;
    int index;
} nx_arg;

enum { NX_COMPARE = 0, NX_NEVER = 1, NX_ALWAYS = 2 };

/* A range check on check values lo (the minimum) and hi (the maximum) of one dtype.  A bound
 * of an integer dtype is an exact threshold inside the dtype's range (fails: lo < low_i,
 * hi >= high_i; uint64: low_u, high_u) or a mode: never or always fails.  Of a float dtype:
 * fails when lo < low_f, hi > high_f, or hi == high_f and not high_inclusive. */
typedef struct {
    int lo, hi, dtype;
    int low_mode, high_mode;
    int64_t low_i, high_i;
    uint64_t low_u, high_u;
    double low_f, high_f;
    int high_inclusive;
    const char* message;
} nx_check;

/* One program: a static entry, or one taking the batch size (sized). */
typedef struct {
    void (*entry)(void** args, void* arena, const void* pool);
    void (*sized)(void** args, void* arena, const void* pool, const int64_t* sizes);
    const nx_arg* args;
    int num_args;
    const int* out_slot;
    const nx_check* checks;
    int num_checks;
} nx_program;
"""


def c_string(text: str) -> str:
    """`text` as a C string literal (UTF-8; anything but plain printable ASCII octal-escaped)."""
    out = []
    for byte in text.encode():
        ch = chr(byte)
        out.append(ch if 0x20 <= byte < 0x7F and ch not in '"\\?' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _nbytes(t: CTensor, max_batch: int = 0) -> int:
    """The bytes of `t`; with a dimension that depends on the batch, at batch `max_batch`."""
    count = 1
    for d in t.shape:
        count *= size_value(d, {BATCH_SYMBOL: max_batch})
    return count * _ITEMSIZE[t.dtype]


def _coefficients(size: Poly) -> list[int]:
    """c0..c3 of a size c0 + c1*batch + c2*batch**2 + c3*batch**3; ValueError for another."""
    out = [0] * POLY_TERMS
    for monomial, coefficient in size.terms:
        if set(monomial) != {BATCH_SYMBOL} or len(monomial) >= POLY_TERMS:
            raise ValueError(f"export: a dimension {size} is not a polynomial of degree at "
                             f"most {POLY_TERMS - 1} in {BATCH_SYMBOL!r}; the C API cannot "
                             f"state it")
        out[len(monomial)] = coefficient
    return out


_ITEMSIZE = {"bool": 1, "uint8": 1, "int8": 1, "int16": 2, "uint16": 2, "float16": 2,
             "int32": 4, "uint32": 4, "float32": 4, "float64": 8, "int64": 8, "uint64": 8}


def _table(name: str, tensors: list[CTensor], shapes: list[str], max_batch: int = 0) -> str:
    rows = []
    for t in tensors:
        shape_name = f"NX_SHAPE_{len(shapes)}"
        dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in t.shape) or "0"
        shapes.append(f"static const int64_t {shape_name}[] = {{{dims}}};")
        poly = "NULL"
        if any(isinstance(d, Poly) for d in t.shape):
            poly = f"NX_POLY_{len(shapes)}"
            coefficients = [c for d in t.shape
                            for c in (_coefficients(d) if isinstance(d, Poly)
                                      else [d] + [0] * (POLY_TERMS - 1))]
            shapes.append(f"static const int64_t {poly}[] = "
                          f"{{{', '.join(_c_int64(c) for c in coefficients)}}};")
        rows.append(f"    {{{c_string(t.name)}, {DTYPE_CODES[t.dtype]}, {len(t.shape)}, "
                    f"{shape_name}, {_nbytes(t, max_batch)}u, {poly}}},")
    body = "\n".join(rows) or "    {0}"
    return f"static const nx_info {name}[] = {{\n{body}\n}};"


def _shape_text(shape: tuple[Size, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def header(inputs: list[CTensor], outputs: list[CTensor], *, training: bool = False,
           max_batch: int = 0) -> str:
    """model.h for a model with these inputs and outputs (`training`: a training artifact,
    one with state: NX_MODEL_TRAINING 1; `max_batch`: a dynamic-batch artifact's largest
    batch, NX_MODEL_MAX_BATCH)."""
    lines = [f"#define NX_MODEL_NUM_INPUTS {len(inputs)}",
             f"#define NX_MODEL_NUM_OUTPUTS {len(outputs)}",
             f"#define NX_MODEL_TRAINING {int(bool(training))}",
             f"#define NX_MODEL_MAX_BATCH {int(max_batch)}"]
    for kind, tensors in (("input", inputs), ("output", outputs)):
        for i, t in enumerate(tensors):
            name = t.name.encode("ascii", "replace").decode().replace("*/", "* /")
            at = f" at batch {max_batch}" if max_batch else ""
            lines.append(f"/* {kind} {i}: {name} {t.dtype}{_shape_text(t.shape)}, "
                         f"{_nbytes(t, max_batch)} bytes{at} */")
    return HEADER % {"macros": "\n".join(lines)}


_INT_RANGES = {"bool": (0, 1), "uint8": (0, 255), "int8": (-128, 127),
               "int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, (1 << 16) - 1),
               "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1),
               "int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1)}
_COMPARE, _NEVER, _ALWAYS = "NX_COMPARE", "NX_NEVER", "NX_ALWAYS"


def _int_bounds(check: CCheck) -> tuple[str, int, str, int]:
    """(low mode, low threshold, high mode, high threshold) of a check on integer values v,
    exact: v fails low iff v < its threshold, high iff v >= its threshold; a threshold outside
    the dtype's range becomes a mode instead (every value, or none, fails)."""
    lowest, highest = _INT_RANGES[check.dtype]
    low, high = check.low, check.high
    if isinstance(low, float) and not math.isfinite(low):
        low_t = highest + 1 if low > 0 else lowest  # inf: every value fails; -inf, nan: none
    else:
        low_t = math.ceil(Fraction(low))
    if isinstance(high, float) and not math.isfinite(high):
        high_t = lowest if high < 0 else highest + 1  # -inf: every value fails; inf, nan: none
    else:
        exact = Fraction(high)
        high_t = (exact.numerator + int(check.high_inclusive) if exact.denominator == 1
                  else math.floor(exact) + 1)
    low_mode = _NEVER if low_t <= lowest else _ALWAYS if low_t > highest else _COMPARE
    high_mode = _ALWAYS if high_t <= lowest else _NEVER if high_t > highest else _COMPARE
    return (low_mode, low_t if low_mode == _COMPARE else 0, high_mode,
            high_t if high_mode == _COMPARE else 0)


def _float_bounds(check: CCheck) -> tuple[float, float, bool]:
    """(low, high, high_inclusive) as doubles deciding as the exact bounds do for every double
    v: an integer bound that is no double becomes the least double above it (low) or the
    greatest below it (high, then inclusive: v cannot equal the bound)."""
    def rounded(bound: float | int) -> float:
        if isinstance(bound, float):
            return bound
        try:
            return float(bound)
        except OverflowError:
            return math.inf if bound > 0 else -math.inf

    low, high, inclusive = rounded(check.low), rounded(check.high), check.high_inclusive
    # (Python compares an int and a float exactly; an infinite rounding steps to the
    # largest finite double)
    if not isinstance(check.low, float) and low != check.low:
        low = math.nextafter(low, math.inf) if low < check.low else low
    if not isinstance(check.high, float) and high != check.high:
        high = math.nextafter(high, -math.inf) if high > check.high else high
        inclusive = True
    return low, high, inclusive


def _c_double(value: float) -> str:
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "HUGE_VAL" if value > 0 else "-HUGE_VAL"
    return value.hex()


def _c_int64(value: int) -> str:
    return f"INT64_C({value})" if value >= 0 else f"(-INT64_C({-value}))"


def _check_row(check: CCheck) -> str:
    if check.dtype not in DTYPE_CODES:
        raise ValueError(f"export: a value check on dtype {check.dtype!r}")
    low_mode, high_mode, low_i, high_i, low_u, high_u = _COMPARE, _COMPARE, 0, 0, 0, 0
    low_f, high_f, inclusive = 0.0, 0.0, check.high_inclusive
    if check.dtype in _INT_RANGES:
        low_mode, low_t, high_mode, high_t = _int_bounds(check)
        if check.dtype == "uint64":
            low_u, high_u = low_t, high_t
        else:
            low_i, high_i = low_t, high_t
    else:
        low_f, high_f, inclusive = _float_bounds(check)
    return (f"    {{{check.lo}, {check.hi}, {DTYPE_CODES[check.dtype]}, {low_mode}, "
            f"{high_mode}, {_c_int64(low_i)}, {_c_int64(high_i)}, UINT64_C({low_u}), "
            f"UINT64_C({high_u}), {_c_double(low_f)}, {_c_double(high_f)}, {int(inclusive)}, "
            f"{c_string(check.message)}}},")


ARG_KINDS = {"input": "NX_ARG_INPUT", "output": "NX_ARG_OUTPUT", "tensor": "NX_ARG_TENSOR",
             "state_out": "NX_ARG_STATE_OUT", "check": "NX_ARG_CHECK", "seed": "NX_ARG_SEED"}


def source(entry: str, inputs: list[CTensor], outputs: list[CTensor], tensors: list[CTensor],
           args: list[tuple[str, int]], out_slot: list[int], arena_bytes: int, *,
           states: list[int] | None = None, checks: list[CCheck] | None = None,
           seed: int | None = None, max_batch: int = 0, sized: bool = False,
           batch1: CProgram | None = None) -> str:
    """model.c: the runtime after the tables of this program.  `tensors` are read from the
    weights file by name; `args` is the entry's argument order, each (kind, index): "input"
    (model input i), "output" (model output k; `out_slot[k]` is the first output of its
    buffer), "tensor" (tensors[t]'s current values), and for a training step "state_out" (a
    buffer for state s's next value), "check" (check value c: a 0-d value `checks` read) and
    "seed" (0: a 0-d int64, `seed` + the number of successful runs).  State s is tensors
    [states[s]]: after a run whose `checks` pass, its next value becomes its current one.
    A dynamic-batch artifact gives `max_batch` (its largest batch; `arena_bytes` is then the
    arena of the largest call), `sized` (the entry takes the batch size) and `batch1`, the
    static program of batch 1."""
    states, checks = list(states or []), list(checks or [])
    for t in inputs + outputs + tensors:
        if len(t.shape) > MAX_RANK:
            raise ValueError(f"export: tensor {t.name!r} has rank {len(t.shape)}; the C API "
                             f"takes at most {MAX_RANK}")
    if len(set(states)) != len(states) or any(not 0 <= t < len(tensors) for t in states):
        raise ValueError(f"export: states {states} are not distinct tensor indices "
                         f"(the program reads {len(tensors)} tensors)")
    if any(isinstance(d, Poly) for t in inputs + outputs for d in t.shape) and max_batch < 2:
        raise ValueError("export: a tensor's shape depends on the batch, but no max_batch "
                         "was given")
    programs = [CProgram(entry, list(args), list(out_slot), checks, sized)]
    if batch1 is not None:
        programs.append(batch1)
    for program in programs:
        _check_program(program, inputs, outputs, tensors, states, seed)
    shapes: list[str] = []
    tables = [_table("NX_INPUTS", inputs, shapes, max_batch),
              _table("NX_OUTPUTS", outputs, shapes, max_batch),
              _table("NX_TENSORS", tensors, shapes)]
    state_rows = ", ".join(str(t) for t in states) or "0"
    check_values = max(1 + max((i for k, i in p.args if k == "check"), default=-1)
                       for p in programs)
    generated = [
        "", "/* ---- generated from the program ---------------------------------------------- */",
        "",
        f"#define NX_NUM_INPUTS {len(inputs)}",
        f"#define NX_NUM_OUTPUTS {len(outputs)}",
        f"#define NX_NUM_TENSORS {len(tensors)}",
        f"#define NX_NUM_ARGS {max(len(p.args) for p in programs)}",
        f"#define NX_NUM_STATES {len(states)}",
        f"#define NX_NUM_CHECK_VALUES {check_values}",
        f"#define NX_NUM_CHECKS {len(checks)} /* the first program's */",
        f"#define NX_NUM_PROGRAMS {len(programs)}",
        f"#define NX_SEED UINT64_C({int(seed or 0) % (1 << 64)})",
        f"#define NX_MAX_RANK {MAX_RANK}",
        f"#define NX_MAX_BATCH INT64_C({int(max_batch)})",
        f"#define NX_POLY_TERMS {POLY_TERMS}",
        f"#define NX_ARENA_BYTES ((size_t){arena_bytes}u)",
        "",
        *[f"extern void {p.entry}(void** args, void* arena, const void* pool"
          f"{', const int64_t* sizes' if p.sized else ''});" for p in programs],
        "", *shapes, "", *tables, "",
        f"static const int NX_STATES[] = {{{state_rows}}}; /* state s: NX_TENSORS[NX_STATES[s]] */",
    ]
    rows = []
    for k, program in enumerate(programs):
        arg_rows = "\n".join(f"    {{{ARG_KINDS[a]}, {i}}}," for a, i in program.args) \
            or "    {0}"
        slots = ", ".join(str(j) for j in program.out_slot) or "0"
        check_rows = "\n".join(_check_row(c) for c in program.checks) or "    {0}"
        generated += [f"static const nx_arg NX_ARGS_{k}[] = {{\n{arg_rows}\n}};",
                      f"static const int NX_OUT_SLOT_{k}[] = {{{slots}}};",
                      f"static const nx_check NX_CHECKS_{k}[] = {{\n{check_rows}\n}};"]
        call = f"NULL, {program.entry}" if program.sized else f"{program.entry}, NULL"
        rows.append(f"    {{{call}, NX_ARGS_{k}, {len(program.args)}, NX_OUT_SLOT_{k}, "
                    f"NX_CHECKS_{k}, {len(program.checks)}}},")
    generated.append("static const nx_program NX_PROGRAMS[] = {\n" + "\n".join(rows) + "\n};")
    return PRELUDE + "\n".join(generated) + "\n" + RUNTIME


def _check_program(program: CProgram, inputs: list[CTensor], outputs: list[CTensor],
                   tensors: list[CTensor], states: list[int], seed: int | None) -> None:
    """A ValueError when `program`'s entry arguments name what the C API does not hold."""
    if not program.entry.replace("_", "a").isalnum():
        raise ValueError(f"export: entry symbol {program.entry!r} is not a C identifier")
    counts = {"input": len(inputs), "output": len(outputs), "tensor": len(tensors),
              "state_out": len(states), "seed": 1,
              "check": 1 + max((i for k, i in program.args if k == "check"), default=-1)}
    for kind, index in program.args:
        if kind not in ARG_KINDS or not 0 <= index < counts[kind]:
            raise ValueError(f"export: entry argument ({kind!r}, {index}) names nothing "
                             f"the C API holds")
    written = sorted(i for k, i in program.args if k == "state_out")
    if written != list(range(len(states))):
        raise ValueError(f"export: each state needs exactly one 'state_out' argument; the "
                         f"entry has {written} for {len(states)} states")
    if any(k == "seed" for k, _ in program.args) and seed is None:
        raise ValueError("export: the entry takes a seed but no initial seed was given")
    have = {i for k, i in program.args if k == "check"}
    for check in program.checks:
        if check.lo not in have or check.hi not in have:
            raise ValueError(f"export: check {check} reads values the entry does not write")
    if len(program.out_slot) != len(outputs):
        raise ValueError(f"export: {len(program.out_slot)} output slots for "
                         f"{len(outputs)} outputs")
