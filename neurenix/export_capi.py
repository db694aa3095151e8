"""The C API of an exported CPU model: `model.h` and `model.c` (compiled into `model.so`).

`model.h` is the same for every model but for its NX_MODEL_* macros; `model.c` is a fixed
runtime (error reporting, a small strict safetensors reader, load/run/free, metadata queries)
after tables generated from the program: the model's inputs and outputs, the tensors it reads
from `weights.safetensors`, the entry function's argument order and the arena size.  The
entry function comes from the LLVM object linked beside it; passed a NULL thread pool it runs
serially in the caller's thread.  docs/deploy/c.md is the user's guide.
"""
from __future__ import annotations

from dataclasses import dataclass

DTYPE_CODES = {"bool": 0, "uint8": 1, "int8": 2, "int16": 3, "uint16": 4, "float16": 5,
               "int32": 6, "uint32": 7, "float32": 8, "float64": 9, "int64": 10, "uint64": 11}
"""`enum nx_dtype` of model.h (the order of SAFETENSORS_NAMES below)."""
SAFETENSORS_NAMES = ("BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "F64",
                     "I64", "U64")
MAX_RANK = 8


@dataclass(frozen=True)
class CTensor:
    """A tensor the C API knows: its name, dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


HEADER = r"""/* model.h: the C API of a model exported by neurenix.export (target cpu).
 *
 * Link with model.so (built beside this file).  Every function is thread-safe except that
 * one nx_model runs one call at a time (it owns one scratch arena): use one model per thread
 * to run in parallel.  Errors: a NULL or negative return, and nx_last_error() (per thread)
 * says why.  Arrays are C-contiguous, little-endian, of the dtype and shape the queries
 * report; output buffers must not overlap inputs.  See docs/deploy/c.md.
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
 * nx_model_output_bytes(model, i) bytes.  0 on success, -1 on error. */
int nx_model_run(nx_model* model, const void* const* inputs, void* const* outputs);

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

const char* nx_dtype_name(int dtype) {
    return dtype >= 0 && dtype < 12 ? NX_DTYPE_NAMES[dtype] : NULL;
}

struct nx_model {
    void* tensors[NX_NUM_TENSORS + 1];
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
    for (int a = 0; a < NX_NUM_ARGS; ++a)
        if (NX_ARGS[a].kind == NX_ARG_TENSOR) model->args[a] = model->tensors[NX_ARGS[a].index];
    return model;
}

int nx_model_run(nx_model* model, const void* const* inputs, void* const* outputs) {
    if (!model || (NX_NUM_INPUTS && !inputs) || !outputs) {
        nx_fail("nx_model_run: model, inputs and outputs must not be NULL");
        return -1;
    }
    for (int i = 0; i < NX_NUM_INPUTS; ++i) {
        if (!inputs[i]) {
            nx_fail("nx_model_run: input %d (%s) is NULL", i, NX_INPUTS[i].name);
            return -1;
        }
    }
    for (int i = 0; i < NX_NUM_OUTPUTS; ++i) {
        if (!outputs[i]) {
            nx_fail("nx_model_run: output %d (%s) is NULL", i, NX_OUTPUTS[i].name);
            return -1;
        }
    }
    for (int a = 0; a < NX_NUM_ARGS; ++a) {
        if (NX_ARGS[a].kind == NX_ARG_INPUT)
            model->args[a] = (void*)inputs[NX_ARGS[a].index];
        else if (NX_ARGS[a].kind == NX_ARG_OUTPUT)
            model->args[a] = outputs[NX_OUT_SLOT[NX_ARGS[a].index]];
    }
    NX_ENTRY(model->args, model->arena, NULL);
    for (int i = 0; i < NX_NUM_OUTPUTS; ++i)
        if (NX_OUT_SLOT[i] != i) memcpy(outputs[i], outputs[NX_OUT_SLOT[i]], NX_OUTPUTS[i].bytes);
    return 0;
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
"""

PRELUDE = r"""/* model.c: the C API of an exported model (generated by neurenix.export). */
#define _POSIX_C_SOURCE 200809L
#include "model.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char* name;
    int dtype;
    int rank;
    const int64_t* shape;
    size_t bytes;
} nx_info;

enum { NX_ARG_INPUT = 0, NX_ARG_OUTPUT = 1, NX_ARG_TENSOR = 2 };

typedef struct {
    int kind;
    int index; /* into NX_INPUTS, NX_OUTPUTS or NX_TENSORS */
} nx_arg;
"""


def c_string(text: str) -> str:
    """`text` as a C string literal (UTF-8; anything but plain printable ASCII octal-escaped)."""
    out = []
    for byte in text.encode():
        ch = chr(byte)
        out.append(ch if 0x20 <= byte < 0x7F and ch not in '"\\?' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _nbytes(t: CTensor) -> int:
    count = 1
    for d in t.shape:
        count *= d
    return count * _ITEMSIZE[t.dtype]


_ITEMSIZE = {"bool": 1, "uint8": 1, "int8": 1, "int16": 2, "uint16": 2, "float16": 2,
             "int32": 4, "uint32": 4, "float32": 4, "float64": 8, "int64": 8, "uint64": 8}


def _table(name: str, tensors: list[CTensor], shapes: list[str]) -> str:
    rows = []
    for t in tensors:
        shape_name = f"NX_SHAPE_{len(shapes)}"
        dims = ", ".join(str(d) for d in t.shape) or "0"
        shapes.append(f"static const int64_t {shape_name}[] = {{{dims}}};")
        rows.append(f"    {{{c_string(t.name)}, {DTYPE_CODES[t.dtype]}, {len(t.shape)}, "
                    f"{shape_name}, {_nbytes(t)}u}},")
    body = "\n".join(rows) or "    {0}"
    return f"static const nx_info {name}[] = {{\n{body}\n}};"


def header(inputs: list[CTensor], outputs: list[CTensor]) -> str:
    """model.h for a model with these inputs and outputs."""
    lines = [f"#define NX_MODEL_NUM_INPUTS {len(inputs)}",
             f"#define NX_MODEL_NUM_OUTPUTS {len(outputs)}"]
    for kind, tensors in (("input", inputs), ("output", outputs)):
        for i, t in enumerate(tensors):
            name = t.name.encode("ascii", "replace").decode().replace("*/", "* /")
            lines.append(f"/* {kind} {i}: {name} {t.dtype}{list(t.shape)}, {_nbytes(t)} "
                         f"bytes */")
    return HEADER % {"macros": "\n".join(lines)}


def source(entry: str, inputs: list[CTensor], outputs: list[CTensor], tensors: list[CTensor],
           args: list[tuple[str, int]], out_slot: list[int], arena_bytes: int) -> str:
    """model.c: the runtime after the tables of this program.  `tensors` are read from the
    weights file by name; `args` is the entry's argument order, each ("input" | "output" |
    "tensor", index)."""
    for t in inputs + outputs + tensors:
        if len(t.shape) > MAX_RANK:
            raise ValueError(f"export: tensor {t.name!r} has rank {len(t.shape)}; the C API "
                             f"takes at most {MAX_RANK}")
    if not entry.replace("_", "a").isalnum():
        raise ValueError(f"export: entry symbol {entry!r} is not a C identifier")
    shapes: list[str] = []
    tables = [_table("NX_INPUTS", inputs, shapes), _table("NX_OUTPUTS", outputs, shapes),
              _table("NX_TENSORS", tensors, shapes)]
    kinds = {"input": "NX_ARG_INPUT", "output": "NX_ARG_OUTPUT", "tensor": "NX_ARG_TENSOR"}
    arg_rows = "\n".join(f"    {{{kinds[k]}, {i}}}," for k, i in args) or "    {0}"
    slots = ", ".join(str(s) for s in out_slot) or "0"
    generated = "\n".join([
        "", "/* ---- generated from the program ---------------------------------------------- */",
        "",
        f"#define NX_NUM_INPUTS {len(inputs)}",
        f"#define NX_NUM_OUTPUTS {len(outputs)}",
        f"#define NX_NUM_TENSORS {len(tensors)}",
        f"#define NX_NUM_ARGS {len(args)}",
        f"#define NX_MAX_RANK {MAX_RANK}",
        f"#define NX_ARENA_BYTES ((size_t){arena_bytes}u)",
        f"#define NX_ENTRY {entry}",
        "",
        f"extern void {entry}(void** args, void* arena, const void* pool);",
        "", *shapes, "", *tables, "",
        f"static const nx_arg NX_ARGS[] = {{\n{arg_rows}\n}};",
        f"static const int NX_OUT_SLOT[] = {{{slots}}};",
    ])
    return PRELUDE + generated + "\n" + RUNTIME
