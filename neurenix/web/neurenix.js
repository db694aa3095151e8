// neurenix.js: run a Neurenix WebGPU artifact in the browser (no dependencies).
//
//   import { load } from "./neurenix.js";
//   const model = await load("./");                 // the artifact's directory (its URL)
//   const [y] = await model.run([new Float32Array(16)]);
//
// `load(baseUrl)` fetches manifest.json, weights.safetensors and kernels/NAME.wgsl, checks
// each file's size and SHA-256 against the manifest, creates a WebGPU device with the limits
// the program needs, compiles one compute pipeline per kernel and uploads the weights and
// constants once.  `model.run(inputs)` writes the inputs, dispatches every kernel in launch
// order with its grid (one compute pass, one submission), copies the outputs into one staging
// buffer and reads them back: the same conventions as neurenix's Python runtime
// (runtime/webgpu.py).  Storage: a bool is a 4-byte 0/1 word on the device (Uint8Array 0/1
// outside), int64 keeps its 8-byte little-endian layout (two u32 words, low first: a
// BigInt64Array outside); float64 does not exist on WebGPU.  docs/deploy/browser.md.
//
// Artifact format 2 (exported training steps, `export(step, inputs, "webgpu", path,
// freeze=False)`) adds program inputs bound to *state* (initial value from the weights file;
// after each successful run, the program output the binding names is copied into the state's
// device buffer, so trained weights and optimizer state stay on the GPU) and to a *seed* (a
// 0-d int64: the binding's seed plus the successful runs so far), and `manifest.checks`:
// range checks on 0-d program outputs, read back and tested after every run before anything
// is committed.  A failed check rejects `run` with Error(message) (`error.name` is the
// check's error type, e.g. "IndexError") and commits nothing: no state is copied and the
// seed counter does not advance (the state copies are a second submission, made only once
// the checks passed).  `run` returns the model outputs only (`manifest.outputs`: the program
// outputs that follow them are check values and new state values).  `model.training` (the
// artifact updates state), `model.steps` (successful runs so far) and
// `await model.readTensor(key)` (the current value of a weights-file tensor: trained
// weights) go with it.
//
// A dynamic-batch artifact (`export(..., dynamic_batch=MAX)`, `manifest.dynamic_batch`) takes
// any batch size from 1 to MAX per call: `model.run(inputs)` infers it from the inputs'
// lengths (`model.batchOf`), `model.run(inputs, {batch})` gives it, and a batch outside
// 1..MAX rejects with a RangeError.  Batch 1 runs the static batch-1 program
// (`dynamic_batch.batch1`, its files under batch1/), every other batch the symbolic program,
// whose sizes (shapes, buffer sizes and arena offsets, the arena, grids with `Groups`, the
// `NxSizes` uniform, `metadata.size_checks`) are polynomials in the batch that `run`
// evaluates per batch size as runtime/sizes.py and runtime/webgpu.py do (`programSizes`),
// growing the arena and the input, output and staging buffers when a call needs more.

export const FORMAT_VERSION = 2;

/** The artifact formats this loader reads. */
export const FORMATS = [1, 2];

const SAFETENSORS_DTYPES = {
  BOOL: "bool", U8: "uint8", I8: "int8", I16: "int16", U16: "uint16", F16: "float16",
  I32: "int32", U32: "uint32", F32: "float32", F64: "float64", I64: "int64", U64: "uint64",
};

const ARRAYS = {
  bool: Uint8Array, uint8: Uint8Array, int8: Int8Array, int16: Int16Array,
  uint16: Uint16Array, float16: globalThis.Float16Array ?? Uint16Array, int32: Int32Array,
  uint32: Uint32Array, float32: Float32Array, float64: Float64Array, int64: BigInt64Array,
  uint64: BigUint64Array,
};

const ITEMSIZE = {
  bool: 1, uint8: 1, int8: 1, int16: 2, uint16: 2, float16: 2, int32: 4, uint32: 4,
  float32: 4, float64: 8, int64: 8, uint64: 8,
};

const STORAGE = { bool: "uint32" };

const BINDING = /@(group|binding)\s*\(\s*(\d+)\s*\)\s*@(group|binding)\s*\(\s*(\d+)\s*\)\s*var\s*<\s*(\w+)\s*(?:,\s*(\w+)\s*)?>/g;

/** The TypedArray class holding values of `dtype` outside the device. */
export function arrayType(dtype) {
  const type = ARRAYS[dtype];
  if (!type) throw new Error(`neurenix: unknown dtype ${dtype}`);
  return type;
}

/** The number of elements of a shape. */
export function numel(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

function storageItemsize(dtype) {
  return ITEMSIZE[STORAGE[dtype] ?? dtype];
}

function storedBytes(count, dtype) {
  return count * storageItemsize(dtype);
}

function deviceBytes(count, dtype) {
  return Math.max(4, Math.ceil(storedBytes(count, dtype) / 4) * 4);
}

function ceil4(n) {
  return Math.ceil(n / 4) * 4;
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Parse a safetensors file (8-byte little-endian header length, JSON header, raw data):
 * `{name: {dtype, shape, data}}` (`data` a TypedArray copy; bool as Uint8Array; the
 * `__metadata__` entry left out).  Throws on a malformed file. */
export function parseSafetensors(buffer, name = "safetensors") {
  const fail = (why) => new Error(`${name}: not a valid safetensors file: ${why}`);
  if (buffer.byteLength < 8) throw fail("shorter than its 8-byte header length");
  const size = Number(new DataView(buffer).getBigUint64(0, true));
  if (8 + size > buffer.byteLength) {
    throw fail(`header length ${size} runs past the file (${buffer.byteLength} bytes)`);
  }
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, size)));
  } catch (e) {
    throw fail(`the header is not JSON (${e})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw fail("the header is not a JSON object");
  }
  const body = 8 + size;
  const bodyBytes = buffer.byteLength - body;
  const tensors = {};
  const ranges = [];
  for (const [key, entry] of Object.entries(header)) {
    if (key === "__metadata__") continue;
    const dtype = SAFETENSORS_DTYPES[entry?.dtype];
    if (!dtype) throw fail(`tensor ${key} has unknown dtype ${entry?.dtype}`);
    const { shape, data_offsets: offsets } = entry;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw fail(`tensor ${key} has a malformed shape`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !(0 <= offsets[0])
        || !(offsets[0] <= offsets[1]) || !(offsets[1] <= bodyBytes)) {
      throw fail(`tensor ${key} has byte range ${JSON.stringify(offsets)} outside the data`);
    }
    const count = numel(shape);
    if (count * ITEMSIZE[dtype] !== offsets[1] - offsets[0]) {
      throw fail(`tensor ${key}: shape [${shape}] does not fill bytes [${offsets}]`);
    }
    ranges.push(offsets);
    const bytes = buffer.slice(body + offsets[0], body + offsets[1]);
    tensors[key] = { dtype, shape, data: new (arrayType(dtype))(bytes) };
  }
  let end = 0;
  for (const [begin, stop] of ranges.sort((a, b) => a[0] - b[0])) {
    if (begin !== end) throw fail("tensor byte ranges overlap or leave a hole");
    end = stop;
  }
  if (end !== bodyBytes) throw fail(`the data holds ${bodyBytes} bytes, the tensors ${end}`);
  return tensors;
}

/** The `@group(0)` storage bindings a WGSL module declares: Map binding -> read-only. */
export function declaredBindings(source) {
  const found = new Map();
  for (const m of source.matchAll(BINDING)) {
    const attrs = { [m[1]]: Number(m[2]), [m[3]]: Number(m[4]) };
    if (attrs.group === 0 && attrs.binding !== undefined && m[5] === "storage") {
      found.set(attrs.binding, (m[6] ?? "read") === "read");
    }
  }
  return found;
}

/** The arena bindings a kernel declares read-only while it writes another temporary (WebGPU
 * forbids a buffer bound writable beside another binding of it): declared read_write. */
function arenaPromotions(args, declared, temps) {
  const arena = [];
  args.forEach((name, i) => {
    if (temps.has(name) && declared.has(i)) arena.push([i, declared.get(i)]);
  });
  if (arena.every(([, readOnly]) => readOnly)) return new Set();
  return new Set(arena.filter(([, readOnly]) => readOnly).map(([i]) => i));
}

/** The module with its `@group(0)` storage bindings `which` declared read_write. */
function writable(source, which) {
  return source.replace(BINDING, (...match) => {
    const groups = match.slice(0, 7);
    const attrs = { [groups[1]]: Number(groups[2]), [groups[3]]: Number(groups[4]) };
    if (attrs.group !== 0 || !which.has(attrs.binding)) return groups[0];
    const at = groups[0].search(/<\s*storage/);
    return groups[0].slice(0, at) + "<storage, read_write>";
  });
}

function camel(name) {
  return name.replace(/[_-](\w)/g, (_, c) => c.toUpperCase());
}

async function fetchFile(base, name, manifest, verify, kind) {
  const url = new URL(name, base);
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${name}: cannot fetch ${url} (HTTP ${response.status})`);
  const data = await response.arrayBuffer();
  if (manifest && verify) {
    const entry = manifest.files?.[name];
    if (!entry) throw new Error(`${name}: the manifest does not list it (no checksum)`);
    if (data.byteLength !== entry.bytes) {
      throw new Error(`${name}: ${data.byteLength} bytes, the manifest says ${entry.bytes} `
                      + "(truncated or replaced)");
    }
    if (globalThis.crypto?.subtle) {
      const digest = hex(await crypto.subtle.digest("SHA-256", data));
      if (digest !== entry.sha256) {
        throw new Error(`${name}: SHA-256 does not match the manifest (the file was modified `
                        + "or corrupted)");
      }
    }
  }
  return kind === "text" ? new TextDecoder().decode(data) : data;
}

/** `values` (a TypedArray or an array of numbers) as the bytes a device buffer holds for a
 * tensor of `count` elements of `dtype`, padded to a multiple of 4. */
function toStorage(values, dtype, count, what) {
  const Type = arrayType(dtype);
  let array = values;
  if (!(array instanceof Type)) {
    if (!values || typeof values.length !== "number") {
      throw new TypeError(`${what}: expected a ${Type.name} of ${count} ${dtype} values`);
    }
    const big = dtype === "int64" || dtype === "uint64";
    array = Type.from(values, (v) => (big ? BigInt(v) : dtype === "bool" ? (v ? 1 : 0) : v));
  }
  if (array.length !== count) {
    throw new RangeError(`${what}: expected ${count} ${dtype} values, got ${array.length}`);
  }
  if (dtype === "bool") array = Uint32Array.from(array, (v) => (v ? 1 : 0));
  const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
  if (bytes.byteLength % 4 === 0 && bytes.byteLength > 0) return bytes;
  const padded = new Uint8Array(Math.max(4, ceil4(bytes.byteLength)));
  padded.set(bytes);
  return padded;
}

/** A TypedArray of `count` `dtype` values from device bytes at `offset` of `raw`. */
function fromStorage(raw, offset, count, dtype) {
  const bytes = raw.slice(offset, offset + storedBytes(count, dtype));
  if (dtype === "bool") return Uint8Array.from(new Uint32Array(bytes), (v) => (v ? 1 : 0));
  return new (arrayType(dtype))(bytes);
}

/** The model's inputs and outputs as `{name, shape, dtype}` (a dimension that depends on the
 * batch size as the text of its polynomial: "batch", "4*batch"). */
function specs(list) {
  return list.map((t) => ({ name: t.name, shape: t.shape.map((d) => (typeof d === "number" ? d
    : sizeText(d))), dtype: t.dtype }));
}

// ---- sizes known per call (runtime/sizes.py) ------------------------------------------------

function exact(value, what) {
  if (!Number.isSafeInteger(value)) {
    throw new RangeError(`neurenix: ${what} is ${value}, not an integer a number holds exactly`);
  }
  return value;
}

/** The value of a size of the manifest (an integer, or `{"poly": [[symbols, coefficient],
 * ...]}`: a sum of coefficients times products of symbols) for the symbols' values `env`, as
 * `runtime.sizes.size_value` computes it. */
export function sizeValue(size, env = {}) {
  if (typeof size === "number") return size;
  if (!size || !Array.isArray(size.poly)) {
    throw new Error(`neurenix: a size is ${JSON.stringify(size)}, not an integer or a polynomial`);
  }
  let total = 0;
  for (const [symbols, coefficient] of size.poly) {
    let value = coefficient;
    for (const name of symbols) {
      if (!Number.isInteger(env[name])) {
        throw new Error(`neurenix: size ${sizeText(size)} needs the value of ${name}`);
      }
      value *= env[name];
    }
    total += value;
  }
  return exact(total, `size ${sizeText(size)}`);
}

/** The value of a launch dimension (a size, or `{"groups": [[size, divisor], ...], "most":
 * n}`: the product of the ceiling divisions, capped at `most` when it is not 0), as
 * `runtime.sizes.extent_value` computes it. */
export function extentValue(extent, env = {}) {
  if (extent && Array.isArray(extent.groups)) {
    let total = 1;
    for (const [size, divisor] of extent.groups) {
      const value = sizeValue(size, env);
      total *= (value - (((value % divisor) + divisor) % divisor)) / divisor
        + (value % divisor ? 1 : 0);
    }
    exact(total, "a launch's work-groups");
    return extent.most ? Math.min(total, extent.most) : total;
  }
  return sizeValue(extent, env);
}

/** A size as `runtime.sizes.Poly` prints it ("batch", "4*batch + 64"). */
export function sizeText(size) {
  if (typeof size === "number") return String(size);
  if (size && Array.isArray(size.groups)) {
    const parts = size.groups.map(([s, d]) => (d !== 1 ? `ceil((${sizeText(s)}) / ${d})`
      : `(${sizeText(s)})`)).join(" * ");
    return size.most ? `min(${parts}, ${size.most})` : parts;
  }
  if (!size || !Array.isArray(size.poly)) return JSON.stringify(size);
  return size.poly.map(([symbols, c]) => (!symbols.length ? String(c)
    : c === 1 ? symbols.join("*") : `${c}*${symbols.join("*")}`)).join(" + ")
    .replaceAll("+ -", "- ");
}

/** A check value (a number or a BigInt) as Python's `str` writes it (what the Python and C
 * runtimes put in the message): integers as they are, floats in Python's shortest form
 * ("3.0", "0.1", "1e-05", "1e+16", "nan", "inf"). */
export function checkValueText(value, dtype) {
  if (typeof value === "bigint" || !/^float/.test(dtype)) return String(value);
  if (Number.isNaN(value)) return "nan";
  if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
  if (value === 0) return Object.is(value, -0) ? "-0.0" : "0.0";
  const [mantissa, exponent] = value.toExponential().split("e");
  const e = Number(exponent);
  if (e < -4 || e >= 16) {
    return `${mantissa}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  }
  const text = String(value);
  return /[.e]/.test(text) ? text : `${text}.0`;
}

/** The first failing range check of `checks` on the values read back (`value(j)`: program
 * output j's single value), as an Error to reject with; null when all pass.  Comparisons of
 * a BigInt with a JSON number are exact in JavaScript; NaN never fails. */
function failedCheck(checks, value) {
  for (const check of checks) {
    const lo = value(check.lo);
    const hi = value(check.hi);
    let bad = null;
    if (check.low !== null && check.low !== undefined && lo.value < check.low) bad = lo;
    // `==` (not ===): a BigInt equals a number of the same value; all comparisons are exact
    else if (check.high !== null && check.high !== undefined
             && (hi.value > check.high || (hi.value == check.high && !check.high_inclusive))) {
      bad = hi;
    }
    if (bad) {
      const message = String(check.message ?? "value {} is out of range")
        .replace("{}", checkValueText(bad.value, bad.dtype));
      const error = new Error(message);
      error.name = check.error || "Error";
      return error;
    }
  }
  return null;
}

/** An exported model loaded on a WebGPU device (see `load`). */
export class Model {
  constructor(fields) {
    Object.assign(this, fields);
    this._queue = Promise.resolve();
  }

  /** The outputs (one TypedArray each, flattened in C order; `model.outputs` says their
   * dtypes, `model.shapesAt(batch)` their shapes) for `inputs` (one TypedArray or array of
   * numbers each, in `model.inputs` order, flattened in C order).  A dynamic-batch artifact
   * (`model.maxBatch` is not null) takes any batch size from 1 to `maxBatch`: the leading
   * dimension of every input, inferred from the inputs' lengths (`model.batchOf`) or given
   * as `options.batch`; a batch size outside 1..maxBatch rejects with a RangeError.  For a
   * training artifact, a run that passes its checks then commits the new state
   * (`model.steps` counts these runs); one that fails a check rejects and commits nothing. */
  run(inputs, options = {}) {
    return this._queued(() => this._run(inputs, options));
  }

  /** The batch size `inputs` hold (a dynamic-batch artifact; null for fixed shapes): each
   * input's length divided by the values of one sample (the product of its dimensions after
   * the first).  Throws when a length is not a whole number of samples or the inputs
   * disagree. */
  batchOf(inputs) {
    if (this.maxBatch === null) return null;
    if (!Array.isArray(inputs) || inputs.length !== this.inputs.length) {
      throw new Error(`neurenix: the model takes ${this.inputs.length} inputs, got `
                      + `${Array.isArray(inputs) ? inputs.length : typeof inputs}`);
    }
    let batch = null;
    let from = null;
    this.manifest.inputs.forEach((t, k) => {
      const rest = t.shape.slice(1).map((d) => sizeValue(d));
      const per = numel(rest);
      const length = inputs[k]?.length;
      if (typeof length !== "number") {
        throw new TypeError(`neurenix: input ${t.name}: expected a TypedArray or an array of `
                            + `${t.dtype} values, got ${typeof inputs[k]}`);
      }
      if (per === 0) return;
      if (length % per !== 0) {
        throw new RangeError(`neurenix: input ${t.name} holds ${length} values, not a whole `
                             + `number of samples of shape [${rest}] (${per} values each)`);
      }
      if (batch !== null && length / per !== batch) {
        throw new RangeError(`neurenix: the inputs hold different batch sizes: ${from} `
                             + `${batch}, ${t.name} ${length / per}`);
      }
      batch = length / per;
      from = t.name;
    });
    if (batch === null) {
      throw new Error("neurenix: the inputs' lengths do not give the batch size (no input has "
                      + "values per sample); pass it: model.run(inputs, { batch })");
    }
    return batch;
  }

  /** The shapes of the inputs and outputs at batch size `batch` (`{inputs, outputs}`, lists
   * of integer lists); a fixed-shape artifact's shapes take no batch. */
  shapesAt(batch = null) {
    const env = this._env(batch);
    const at = (list) => list.map((t) => t.shape.map((d) => sizeValue(d, env)));
    return { inputs: at(this.manifest.inputs), outputs: at(this.manifest.outputs) };
  }

  /** The current value of the weights-file tensor `key` (a TypedArray, C order): a state
   * tensor's value after the successful runs so far (trained weights, optimizer state),
   * otherwise the file's value.  `model.tensors` lists the keys, `model.states` the state
   * ones. */
  readTensor(key) {
    return this._queued(() => this._readTensor(key));
  }

  /** Whether the artifact updates state (an exported training step). */
  get training() {
    return this._states.length > 0 || Boolean(this.manifest.training);
  }

  /** The weights-file keys of the state tensors, in binding order. */
  get states() {
    return this._states.map((s) => s.key);
  }

  /** The weights-file keys `readTensor` reads. */
  get tensors() {
    return [...this._tensors.keys()];
  }

  /** The symbols' values at batch size `batch`, checked against 1..maxBatch. */
  _env(batch) {
    if (this.maxBatch === null) {
      if (batch !== null && batch !== undefined) {
        throw new Error("neurenix: this artifact takes fixed shapes (it was exported without "
                        + `dynamic_batch); got batch ${batch}`);
      }
      return {};
    }
    if (!Number.isInteger(batch) || batch < 1 || batch > this.maxBatch) {
      throw new RangeError(`neurenix: batch size ${batch} is outside 1..${this.maxBatch} (the `
                           + `artifact was exported with dynamic_batch=${this.maxBatch})`);
    }
    return { [this._symbol]: batch };
  }

  _queued(work) {
    const result = this._queue.then(work);
    this._queue = result.catch(() => {});
    return result;
  }

  async _run(inputs, options = {}) {
    if (this.lost) throw new Error(`neurenix: the WebGPU device was lost: ${this.lost}`);
    if (!Array.isArray(inputs) || inputs.length !== this.inputs.length) {
      const names = this.inputs.map((t) => t.name).join(", ");
      throw new Error(`neurenix: the model takes ${this.inputs.length} inputs (${names}), got `
                      + `${Array.isArray(inputs) ? inputs.length : typeof inputs}`);
    }
    let batch = options?.batch ?? null;
    if (this.maxBatch !== null && batch === null) batch = this.batchOf(inputs);
    const env = this._env(batch);
    const shapes = this.shapesAt(batch);
    const bytes = inputs.map((x, k) => {
      const spec = this.inputs[k];
      return toStorage(x, spec.dtype, numel(shapes.inputs[k]), `input ${spec.name}`);
    });
    const runner = batch === 1 && this._batch1 ? this._batch1 : this._main;
    const sizes = runner.symbols.length ? env : {};
    const { device } = this;
    let call = runner.known(sizes);
    if (!call) {  // a batch size not run before: its buffers and bind groups, checked
      device.pushErrorScope("validation");
      let failure = null;
      try {
        call = runner.call(sizes);
      } catch (e) {
        failure = e;
      }
      const invalid = await device.popErrorScope();
      if (failure) throw failure;
      if (invalid) throw new Error(`neurenix: preparing the buffers failed: ${invalid.message}`);
    }
    for (const [k, input] of runner.inputs) {
      device.queue.writeBuffer(call.inputs.get(k), 0, bytes[input]);
    }
    for (const { buffer, seed } of runner.seeds) {
      const value = BigInt.asIntN(64, seed + BigInt(this.steps));
      device.queue.writeBuffer(buffer, 0, new BigInt64Array([value]));
    }
    if (runner.uniform) device.queue.writeBuffer(runner.uniform, 0, call.layout.uniform);
    // without checks the state is committed in the same submission (after the outputs are
    // copied out: an output that names a state input reads its value before the run)
    const commitNow = runner.checks.length === 0;
    this._submit((encoder) => {
      if (call.launches.length) {
        const pass = encoder.beginComputePass();
        for (const launch of call.launches) {
          pass.setPipeline(launch.pipeline);
          pass.setBindGroup(0, launch.group);
          pass.dispatchWorkgroups(...launch.grid);
        }
        pass.end();
      }
      for (const copy of call.copies) {
        if (copy.size) encoder.copyBufferToBuffer(copy.buffer, copy.offset, call.staging,
                                                  copy.to, copy.size);
      }
      if (commitNow) commit(encoder, call.stateCopies);
    });
    const popped = await this._popErrors();
    if (popped) throw new Error(`neurenix: the submission failed: ${popped.message}`);
    const mapped = Math.max(4, call.layout.stagingBytes);
    await call.staging.mapAsync(GPUMapMode.READ, 0, mapped);
    let raw;
    try {
      raw = call.staging.getMappedRange(0, mapped).slice(0);
    } finally {
      call.staging.unmap();
    }
    const stagingAt = call.layout.stagingAt;
    const value = (j) => {
      const spec = runner.program.outputs[j];
      return { value: fromStorage(raw, stagingAt.get(j), 1, spec.dtype)[0], dtype: spec.dtype };
    };
    const failed = failedCheck(runner.checks, value);
    if (failed) throw failed;
    if (!commitNow && call.stateCopies.length) {
      this._submit((encoder) => commit(encoder, call.stateCopies));
      const error = await this._popErrors();
      if (error) throw new Error(`neurenix: committing the state failed: ${error.message}`);
    }
    this.steps += 1;
    return this.outputs.map((spec, k) => fromStorage(raw, stagingAt.get(k),
                                                     numel(shapes.outputs[k]), spec.dtype));
  }

  /** Record `record(encoder)` into one command encoder and submit it, inside validation and
   * out-of-memory error scopes (`_popErrors` pops them). */
  _submit(record) {
    const { device } = this;
    device.pushErrorScope("validation");
    device.pushErrorScope("out-of-memory");
    const encoder = device.createCommandEncoder();
    record(encoder);
    device.queue.submit([encoder.finish()]);
  }

  async _popErrors() {
    const errors = [await this.device.popErrorScope(), await this.device.popErrorScope()];
    return errors.find((e) => e) ?? null;
  }

  async _readTensor(key) {
    const tensor = this._tensors.get(key);
    if (!tensor) {
      throw new Error(`neurenix: no tensor ${JSON.stringify(key)} in weights.safetensors `
                      + `(model.tensors lists them)`);
    }
    const count = numel(tensor.shape);
    if (tensor.data) return tensor.data.slice();
    if (this.lost) throw new Error(`neurenix: the WebGPU device was lost: ${this.lost}`);
    const size = ceil4(storedBytes(count, tensor.dtype));
    if (!size) return new (arrayType(tensor.dtype))(0);
    const { device } = this;
    const usage = GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST;
    const staging = device.createBuffer({ size, label: `read ${key}`, usage });
    try {
      this._submit((encoder) => encoder.copyBufferToBuffer(tensor.buffer, 0, staging, 0, size));
      const error = await this._popErrors();
      if (error) throw new Error(`neurenix: reading ${key} failed: ${error.message}`);
      await staging.mapAsync(GPUMapMode.READ);
      const raw = staging.getMappedRange().slice(0);
      staging.unmap();
      return fromStorage(raw, 0, count, tensor.dtype);
    } finally {
      staging.destroy();
    }
  }

  /** The example stored at export (`example.safetensors`): `{inputs, expected}`, each a list
   * of TypedArrays in the model's order (`expected`: the outputs computed eagerly).  For a
   * training artifact also `steps` (K) and `expectedSteps`: per model output, its values
   * after each of the first K runs on the example inputs, (K, *shape) flattened. */
  async example() {
    const info = this.manifest.example;
    if (!info) throw new Error("neurenix: this artifact stores no example");
    const data = await fetchFile(this.baseUrl, info.file, this.manifest, this.verify);
    const tensors = parseSafetensors(data, info.file);
    const pick = (names) => names.map((n) => {
      if (!tensors[n]) throw new Error(`${info.file}: has no tensor ${n}`);
      return tensors[n].data;
    });
    return { inputs: pick(info.inputs), expected: pick(info.expected ?? []),
             steps: info.steps ?? 0, expectedSteps: pick(info.expected_steps ?? []) };
  }

  /** Free the device buffers and the device. */
  destroy() {
    for (const buffer of this._buffers) buffer.destroy();
    this.device.destroy();
  }
}

/** manifest.json as an object.  A seed binding's `seed` is an int64 that a JavaScript number
 * may not hold exactly (past 2^53): it is kept as the string of its digits. */
export function parseManifest(text) {
  return JSON.parse(text.replace(/("seed"\s*:\s*)(-?\d+)(?=\s*[,}])/g, '$1"$2"'));
}

/** Record the copies that make the new state values (program outputs) the current state:
 * first those whose source is itself a state input into scratch buffers (so that a state
 * fed from another state's old value gets that old value), then into the state inputs. */
function commit(encoder, copies) {
  for (const c of copies) {
    if (c.scratch) encoder.copyBufferToBuffer(c.buffer, c.offset, c.scratch, 0, c.size);
  }
  for (const c of copies) {
    if (c.scratch) encoder.copyBufferToBuffer(c.scratch, 0, c.to, 0, c.size);
    else encoder.copyBufferToBuffer(c.buffer, c.offset, c.to, 0, c.size);
  }
}

/** The `@group(0)` binding of a module's uniform buffer (the sizes of a program with dynamic
 * sizes: `struct NxSizes`), or null. */
export function uniformBinding(source) {
  for (const m of source.matchAll(BINDING)) {
    const attrs = { [m[1]]: Number(m[2]), [m[3]]: Number(m[4]) };
    if (attrs.group === 0 && m[5] === "uniform") return attrs.binding;
  }
  return null;
}

/** One program of the artifact checked against the weights, without a device: its input
 * bindings, constants, value checks, the program outputs read back, and its kernels with
 * their sources (arena bindings promoted to read_write where WebGPU needs it). */
function describe(program, part, weights) {
  const { bindings, checks, prefix, sources, programSource, userCount, what } = part;
  if (!Array.isArray(bindings) || bindings.length !== program.inputs.length) {
    throw new Error(`manifest.json: ${bindings?.length} bindings for `
                    + `${program.inputs.length} program inputs (${what})`);
  }
  const constants = new Map();
  for (const name of program.constants) {
    const tensor = weights[`${prefix}${name}`];
    if (!tensor) throw new Error(`weights.safetensors: has no tensor ${prefix}${name}`);
    constants.set(name, tensor);
  }
  const sameSpec = (a, b) => a.dtype === b.dtype && a.shape.join() === b.shape.join();
  const outputCount = program.outputs.length;
  const bound = program.inputs.map((spec, k) => {
    const binding = bindings[k];
    if (binding.from === "input") return { spec, input: binding.index };
    if (binding.from === "seed") {
      if (spec.dtype !== "int64" || spec.shape.length !== 0
          || !/^-?\d+$/.test(String(binding.seed))) {
        throw new Error(`manifest.json: seed binding ${spec.name} must be a 0-d int64 input `
                        + `with an integer seed (got ${spec.dtype}[${spec.shape}], seed `
                        + `${binding.seed})`);
      }
      return { spec, seed: BigInt(String(binding.seed)) };
    }
    if (binding.from !== "weights" && binding.from !== "state") {
      throw new Error(`manifest.json: program input ${spec.name} is bound from `
                      + `${JSON.stringify(binding.from)}, which this loader does not know`);
    }
    const tensor = weights[binding.tensor];
    if (!tensor) {
      throw new Error(`weights.safetensors: has no tensor ${binding.tensor} (program input `
                      + `${spec.name})`);
    }
    if (!sameSpec(tensor, spec)) {
      throw new Error(`weights.safetensors: tensor ${binding.tensor} is ${tensor.dtype}`
                      + `[${tensor.shape}], the program takes ${spec.dtype}[${spec.shape}]`);
    }
    if (binding.from === "weights") return { spec, tensor, key: binding.tensor };
    const j = binding.output;
    if (!Number.isInteger(j) || j < 0 || j >= outputCount) {
      throw new Error(`manifest.json: state ${binding.tensor} takes its new value from program `
                      + `output ${j}, which does not exist (${outputCount} outputs)`);
    }
    if (!sameSpec(program.outputs[j], spec)) {
      const out = program.outputs[j];
      throw new Error(`manifest.json: state ${binding.tensor} is ${spec.dtype}[${spec.shape}], `
                      + `its new value (program output ${j}) ${out.dtype}[${out.shape}]`);
    }
    return { spec, tensor, key: binding.tensor, state: j };
  });
  if (!Array.isArray(checks)) throw new Error("manifest.json: checks is not a list");
  for (const check of checks) {
    if (check.kind !== "range") {
      throw new Error(`manifest.json: a check of kind ${JSON.stringify(check.kind)}, which `
                      + "this loader does not know");
    }
    for (const j of [check.lo, check.hi]) {
      if (!Number.isInteger(j) || j < 0 || j >= outputCount
          || program.outputs[j].shape.some((d) => d !== 1)) {
        throw new Error(`manifest.json: a range check reads program output ${j}, which is not `
                        + "a single value");
      }
    }
  }
  if (userCount > outputCount) {
    throw new Error(`manifest.json: ${userCount} model outputs, the program has ${outputCount}`);
  }
  const symbols = program.symbols ?? [];
  const temps = new Set(program.buffers.filter((b) => b.kind === "temp").map((b) => b.name));
  const kernels = [];
  program.kernels.forEach((info, k) => {
    const grid = info.grid.length ? info.grid : [1];
    const block = info.grid.length ? info.block : [1];
    if (grid.includes(0)) return;  // a static empty range: nothing to launch
    if (grid.length > 3) throw new Error(`kernel ${info.name}: a ${grid.length}-d grid`);
    let source = sources[k] ?? programSource;
    const promote = arenaPromotions(info.args, declaredBindings(source), temps);
    if (promote.size) source = writable(source, promote);
    const uniform = uniformBinding(source);
    if (uniform !== null && !symbols.length) {
      throw new Error(`kernel ${info.name}: binds the sizes' uniform of a program without `
                      + "dynamic sizes");
    }
    kernels.push({ info, source, declared: declaredBindings(source), uniform, block, grid });
  });
  return {
    program, symbols, constants, bound, checks, kernels, prefix,
    // the program outputs read back after each run: the model's, then the checks' values
    readback: [...new Set([...Array(userCount).keys(), ...checks.flatMap((c) => [c.lo, c.hi])])],
    sizeChecks: program.metadata?.size_checks ?? [],
  };
}

/** Every number of one call of a described program for the symbols' values `env` (the
 * batch size), as `Program.sizes` and runtime/webgpu.py's layouts compute them: the
 * temporaries' (offset, bytes) in the arena, the arena's bytes, each input's and output
 * buffer's bytes, each launch's work-groups (null: nothing to launch), where each program
 * output read back lands in the staging buffer, and the uniform's values.  A RangeError
 * when a size passes what the kernels take (`metadata.size_checks`) or 32 bits. */
function layoutOf(desc, env, maxGroups = Infinity) {
  const { program } = desc;
  for (const check of desc.sizeChecks) {
    const value = extentValue(check.size, env);
    if (value > check.most) {
      throw new RangeError(`neurenix: at sizes ${JSON.stringify(env)} the program's size `
                           + `${sizeText(check.size)} is ${value}, more than ${check.most} `
                           + `(${check.what})`);
    }
  }
  for (const [name, value] of Object.entries(env)) {
    if (!(value >= 0 && value < 2 ** 31)) {
      throw new RangeError(`neurenix: size ${name} = ${value} does not fit 32 bits`);
    }
  }
  const temps = new Map();
  for (const b of program.buffers) {
    if (b.kind !== "temp" || (typeof b.offset === "number" && b.offset < 0)) continue;
    const offset = sizeValue(b.offset, env);
    const count = sizeValue(b.size, env);
    if (offset < 0 || count < 0) {
      throw new RangeError(`neurenix: temporary ${b.name} at ${offset} of ${count} elements `
                           + `at sizes ${JSON.stringify(env)}`);
    }
    temps.set(b.name, [offset, Math.max(4, ceil4(storedBytes(count, b.dtype)))]);
  }
  const arenaBytes = ceil4(Math.max(sizeValue(program.arena_bytes, env), 4,
                                    ...[...temps.values()].map(([o, n]) => o + n)));
  const shape = (t) => t.shape.map((d) => sizeValue(d, env));
  const inputShapes = program.inputs.map(shape);
  const outputShapes = program.outputs.map(shape);
  const written = new Map();
  for (const b of program.buffers.filter((b) => b.kind === "output")) {
    const k = program.outputs.findIndex((t) => t.name === b.name);
    const count = k >= 0 ? numel(outputShapes[k]) : sizeValue(b.size, env);
    written.set(b.name, { count, dtype: b.dtype, bytes: deviceBytes(count, b.dtype) });
  }
  const inputBytes = program.inputs.map((t, k) => deviceBytes(numel(inputShapes[k]), t.dtype));
  const grids = desc.kernels.map(({ info, grid }) => {
    const groups = grid.map((g) => extentValue(g, env));
    if (groups.includes(0)) return null;
    if (Math.max(...groups) > maxGroups) {
      throw new RangeError(`neurenix: kernel ${info.name} dispatches [${groups}] work-groups at `
                           + `sizes ${JSON.stringify(env)}; the device takes ${maxGroups} per `
                           + "dimension");
    }
    return [...groups, 1, 1].slice(0, 3);
  });
  const stagingAt = new Map();
  let stagingBytes = 0;
  for (const j of desc.readback) {
    stagingAt.set(j, stagingBytes);
    stagingBytes += ceil4(storedBytes(numel(outputShapes[j]), program.outputs[j].dtype));
  }
  const uniform = new Int32Array(Math.max(4, Math.ceil(desc.symbols.length / 4) * 4));
  desc.symbols.forEach((name, i) => { uniform[i] = env[name]; });
  return { env, temps, arenaBytes, written, inputBytes, inputShapes, outputShapes, grids,
           stagingAt, stagingBytes, uniform };
}

/** The numbers of one call of `program` (a manifest's program JSON) at the symbols' values
 * `env` (e.g. `{batch: 7}`), as `run` computes them: `arenaBytes`, `temps` (name -> [byte
 * offset, bytes bound]), `grids` (per kernel, its work-groups, null: not launched),
 * `inputShapes`, `outputShapes` and `uniform` (the i32 values of the kernels' `NxSizes`).
 * Throws a RangeError where `run` refuses the sizes. */
export function programSizes(program, env = {}) {
  const kernels = program.kernels.map((info) => ({ info,
                                                   grid: info.grid.length ? info.grid : [1] }));
  const layout = layoutOf({ program, symbols: program.symbols ?? [], kernels, readback: [],
                            sizeChecks: program.metadata?.size_checks ?? [] }, env);
  return { arenaBytes: layout.arenaBytes, temps: Object.fromEntries(layout.temps),
           grids: layout.grids, inputShapes: layout.inputShapes,
           outputShapes: layout.outputShapes, uniform: Array.from(layout.uniform) };
}

/** The limits the programs need from the device (WebGPU names), and their features, from
 * their kernels and their layouts at the largest sizes. */
function needs(descs, layouts) {
  const limits = {};
  const need = (name, value) => { limits[name] = Math.max(limits[name] ?? 0, value); };
  let binding = 4;
  let buffer = 4;
  for (const desc of descs) {
    for (const [name, value] of Object.entries(desc.program.metadata?.required_limits ?? {})) {
      need(camel(name), Number(value));
    }
    for (const k of desc.kernels) {
      const block = k.block.length ? k.block : [1];
      need("maxComputeWorkgroupSizeX", block[0] ?? 1);
      need("maxComputeWorkgroupSizeY", block[1] ?? 1);
      need("maxComputeWorkgroupSizeZ", block[2] ?? 1);
      need("maxComputeInvocationsPerWorkgroup", numel(block));
      need("maxStorageBuffersPerShaderStage", k.declared.size);
      need("maxBindingsPerBindGroup", Math.max(0, k.uniform ?? 0, ...k.declared.keys()) + 1);
    }
    for (const c of desc.constants.values()) {
      binding = Math.max(binding, deviceBytes(c.data.length, c.dtype));
    }
  }
  for (const layout of layouts) {
    for (const grid of layout.grids) {
      if (grid) need("maxComputeWorkgroupsPerDimension", Math.max(...grid));
    }
    const sizes = [...[...layout.temps.values()].map(([, n]) => n), ...layout.inputBytes,
                   ...[...layout.written.values()].map((w) => w.bytes)];
    binding = Math.max(binding, ...sizes);
    buffer = Math.max(buffer, layout.arenaBytes, layout.stagingBytes, ...sizes);
  }
  need("maxStorageBufferBindingSize", binding);
  need("maxBufferSize", Math.max(buffer, binding));
  const features = descs.some((d) => d.kernels.some((k) => /\benable\s+f16\s*;/.test(k.source)))
    ? ["shader-f16"] : [];
  return { limits, features };
}

/** A described program on the device: its pipelines, constants, weights (shared with the
 * artifact's other program through `shared`), seeds and uniform, and `call(env)`: the
 * buffers, bind groups and copies of a call at those sizes (remembered per batch size; the
 * arena, input, output and staging buffers grow when a call needs more, as
 * runtime/webgpu.py's arena does). */
async function instantiate(device, desc, shared, maxGroups) {
  const { program } = desc;
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const create = (size, label, use = usage) => {
    const buffer = device.createBuffer({ size: Math.max(4, ceil4(size)), usage: use, label });
    shared.buffers.push(buffer);
    return buffer;
  };
  const upload = (name, dtype, data) => {
    const bytes = toStorage(data, dtype, data.length, name);
    const buffer = create(bytes.byteLength, name);
    device.queue.writeBuffer(buffer, 0, bytes);
    return buffer;
  };
  const kinds = new Map(program.buffers.map((b) => [b.name, b]));
  const inputIndex = new Map(program.inputs.map((t, k) => [t.name, k]));
  const constantBuffers = new Map();
  for (const [name, c] of desc.constants) {
    const buffer = upload(name, c.dtype, c.data);
    constantBuffers.set(name, buffer);
    const key = `${desc.prefix}${name}`;
    if (!shared.tensors.has(key)) {
      shared.tensors.set(key, { dtype: c.dtype, shape: [...c.shape], buffer });
    }
  }
  // weights and state: one device buffer per weights-file tensor, whichever program reads it
  const fixed = desc.bound.map(({ spec, tensor, key, seed }) => {
    if (tensor) {
      if (!shared.tensors.get(key)?.buffer) {
        shared.tensors.set(key, { dtype: spec.dtype, shape: [...spec.shape],
                                  buffer: upload(spec.name, spec.dtype, tensor.data) });
      }
      return shared.tensors.get(key).buffer;
    }
    return seed === undefined ? null : create(8, spec.name);
  });
  const inputs = desc.bound.flatMap(({ input }, k) => (input === undefined ? [] : [[k, input]]));
  const seeds = desc.bound.flatMap((b, k) => (b.seed === undefined ? []
    : [{ buffer: fixed[k], seed: b.seed }]));
  const uniform = desc.symbols.length ? create(Math.max(16, Math.ceil(desc.symbols.length / 4) * 16),
                                              "sizes", GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST)
    : null;

  const pipelines = await Promise.all(desc.kernels.map(async ({ info, source, declared,
                                                                 uniform: u }) => {
    const module = device.createShaderModule({ label: info.name, code: source });
    const compiled = await module.getCompilationInfo();
    const errors = compiled.messages.filter((m) => m.type === "error");
    if (errors.length) {
      throw new Error(`neurenix: kernel ${info.name} does not compile: `
                      + errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join("; "));
    }
    let layout = "auto";
    let groupLayout = null;
    if (declared.size) {
      const entries = [...declared.entries()].sort((a, b) => a[0] - b[0]).map(([i, readOnly]) => ({
        binding: i, visibility: GPUShaderStage.COMPUTE,
        buffer: { type: readOnly ? "read-only-storage" : "storage" } }));
      if (u !== null) {
        entries.push({ binding: u, visibility: GPUShaderStage.COMPUTE, buffer: { type: "uniform" } });
      }
      groupLayout = device.createBindGroupLayout({ label: info.name, entries });
      layout = device.createPipelineLayout({ bindGroupLayouts: [groupLayout] });
    }
    let pipeline;
    try {
      pipeline = await device.createComputePipelineAsync({
        label: info.name, layout, compute: { module, entryPoint: info.name } });
    } catch (e) {
      throw new Error(`neurenix: kernel ${info.name} does not compile: ${e.message ?? e}`);
    }
    return { pipeline, groupLayout: groupLayout ?? pipeline.getBindGroupLayout(0) };
  }));

  // the buffers whose size depends on the call, grown as calls need (bind groups on the
  // old ones are forgotten)
  const grown = { arena: null, staging: null, inputs: new Map(), written: new Map() };
  const calls = new Map();
  const ensure = (have, bytes, label, use = usage) => {
    if (have && have.size >= bytes) return have;
    if (have) have.destroy();
    calls.clear();
    return create(bytes, label, use);
  };

  const call = (env) => {
    const key = JSON.stringify(desc.symbols.map((name) => env[name]));
    const hit = calls.get(key);
    if (hit) return hit;
    const layout = layoutOf(desc, env, maxGroups);
    grown.arena = ensure(grown.arena, layout.arenaBytes, "arena");
    for (const [k] of inputs) {
      grown.inputs.set(k, ensure(grown.inputs.get(k), layout.inputBytes[k], program.inputs[k].name));
    }
    for (const [name, w] of layout.written) {
      grown.written.set(name, ensure(grown.written.get(name), w.bytes, name));
    }
    grown.staging = ensure(grown.staging, layout.stagingBytes, "staging",
                           GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
    const inputBuffer = (k) => fixed[k] ?? grown.inputs.get(k);
    const launches = [];
    desc.kernels.forEach(({ info, declared, uniform: u }, n) => {
      const grid = layout.grids[n];
      if (!grid) return;
      const entries = [];
      info.args.forEach((name, i) => {
        if (declared.size && !declared.has(i)) return;
        const kind = kinds.get(name)?.kind;
        let resource;
        if (inputIndex.has(name) && (kind ?? "input") === "input") {
          const k = inputIndex.get(name);
          resource = { buffer: inputBuffer(k), offset: 0, size: layout.inputBytes[k] };
        } else if (kind === "output") {
          resource = { buffer: grown.written.get(name), offset: 0,
                       size: layout.written.get(name).bytes };
        } else if (layout.temps.has(name)) {
          const [offset, size] = layout.temps.get(name);
          resource = { buffer: grown.arena, offset, size };
        } else if (constantBuffers.has(name)) {
          const buffer = constantBuffers.get(name);
          resource = { buffer, offset: 0, size: buffer.size };
        } else {
          throw new Error(`neurenix: kernel ${info.name} takes ${name}, which is no input, `
                          + "output, constant or temp of the program");
        }
        entries.push({ binding: i, resource });
      });
      if (u !== null) entries.push({ binding: u, resource: { buffer: uniform, offset: 0, size: uniform.size } });
      const group = device.createBindGroup({ label: info.name,
                                             layout: pipelines[n].groupLayout, entries });
      launches.push({ name: info.name, pipeline: pipelines[n].pipeline, group, grid });
    });
    /** Where program output j lives at these sizes: {buffer, offset, size} (padded to 4). */
    const located = (j) => {
      const spec = program.outputs[j];
      const { name } = spec;
      const size = ceil4(storedBytes(numel(layout.outputShapes[j]), spec.dtype));
      if (grown.written.has(name) && layout.written.has(name)) {
        return { buffer: grown.written.get(name), offset: 0, size };
      }
      if (constantBuffers.has(name)) return { buffer: constantBuffers.get(name), offset: 0, size };
      if (layout.temps.has(name)) return { buffer: grown.arena, offset: layout.temps.get(name)[0], size };
      if (inputIndex.has(name)) return { buffer: inputBuffer(inputIndex.get(name)), offset: 0, size };
      throw new Error(`neurenix: output ${name} is not a buffer of the program`);
    };
    const copies = desc.readback.map((j) => ({ ...located(j), to: layout.stagingAt.get(j) }));
    const stateInputs = new Set(desc.bound.flatMap((b, k) => (b.state === undefined ? []
      : [fixed[k]])));
    const stateCopies = [];
    desc.bound.forEach((b, k) => {
      if (b.state === undefined) return;
      const from = located(b.state);
      const to = fixed[k];
      if (!from.size || (from.buffer === to && from.offset === 0)) return;  // unchanged
      const scratch = stateInputs.has(from.buffer)
        ? (shared.scratch.get(`${b.key}|${from.size}`)
           ?? shared.scratch.set(`${b.key}|${from.size}`, create(from.size, `${b.key} (next)`))
             .get(`${b.key}|${from.size}`))
        : null;
      stateCopies.push({ ...from, to, scratch });
    });
    const made = { layout, launches, copies, stateCopies, staging: grown.staging,
                   inputs: new Map(inputs.map(([k]) => [k, inputBuffer(k)])) };
    if (calls.size >= 64) calls.clear();
    calls.set(key, made);
    return made;
  };
  const known = (env) => calls.get(JSON.stringify(desc.symbols.map((name) => env[name])));
  return { program, symbols: desc.symbols, checks: desc.checks, inputs, seeds, uniform, call,
           known };
}

/** manifest.json's `dynamic_batch` (null for fixed shapes) after its structural checks. */
function dynamicBatch(manifest) {
  const dynamic = manifest.dynamic_batch;
  if (dynamic === undefined || dynamic === null) return null;
  const batch1 = dynamic.batch1;
  if (typeof dynamic.symbol !== "string" || !Number.isInteger(dynamic.max) || dynamic.max < 2
      || !batch1?.program || !Array.isArray(batch1.bindings) || !batch1.sources?.program) {
    throw new Error("manifest.json: field dynamic_batch is malformed");
  }
  if ((manifest.program.symbols ?? []).join() !== dynamic.symbol) {
    throw new Error(`manifest.json: a dynamic-batch program has the symbols `
                    + `${JSON.stringify(manifest.program.symbols)}, expected [${dynamic.symbol}]`);
  }
  for (const t of manifest.inputs) {
    const lead = t.shape[0];
    if (sizeText(lead) !== dynamic.symbol) {
      throw new Error(`manifest.json: input ${t.name}'s leading dimension is not the batch size`);
    }
  }
  return dynamic;
}

/** Load the artifact at `baseUrl` (a directory URL, relative to the page) on a new WebGPU
 * device: a `Model`.  Options: `verify` (default true: check each file's size and SHA-256),
 * `powerPreference` ("high-performance"), `adapter` (a GPUAdapter to use). */
export async function load(baseUrl = "./", options = {}) {
  const verify = options.verify ?? true;
  const base = new URL(String(baseUrl).endsWith("/") ? baseUrl : `${baseUrl}/`,
                       globalThis.document?.baseURI ?? globalThis.location?.href);
  const manifest = parseManifest(await fetchFile(base, "manifest.json", null, false, "text"));
  if (!Number.isInteger(manifest.format) || manifest.format < 1) {
    throw new Error(`manifest.json: no format version (got ${manifest.format})`);
  }
  if (manifest.format > FORMAT_VERSION) {
    throw new Error(`manifest.json: format version ${manifest.format} is newer than this `
                    + `loader reads (${FORMAT_VERSION})`);
  }
  if (manifest.target !== "webgpu") {
    throw new Error(`manifest.json: a ${manifest.target} artifact; the browser runs webgpu ones `
                    + "(export with target=\"webgpu\")");
  }
  const dynamic = dynamicBatch(manifest);
  const parts = [{ program: manifest.program, bindings: manifest.bindings,
                   checks: manifest.checks ?? [], prefix: "const:", sources: manifest.sources,
                   what: "the program" }];
  if (dynamic) {
    const b1 = dynamic.batch1;
    parts.push({ program: b1.program, bindings: b1.bindings, checks: b1.checks ?? [],
                 prefix: b1.constants ?? "batch1:const:", sources: b1.sources,
                 what: "the batch-1 program" });
  }
  for (const { program } of parts) {
    const storage = program.metadata?.storage ?? STORAGE;
    if (JSON.stringify(storage) !== JSON.stringify(STORAGE)) {
      throw new Error(`manifest.json: the program stores ${JSON.stringify(storage)}, this `
                      + `loader ${JSON.stringify(STORAGE)}`);
    }
    for (const t of [...program.inputs, ...program.outputs, ...program.buffers]) {
      if (t.dtype === "float64") {
        throw new Error(`manifest.json: ${t.name} is float64, which WebGPU does not have`);
      }
    }
  }
  const fetched = await Promise.all([
    fetchFile(base, "weights.safetensors", manifest, verify),
    ...parts.map(async (part) => {
      const files = part.sources.kernels ?? {};
      const sources = await Promise.all(part.program.kernels.map((k) => (files[k.name]
        ? fetchFile(base, files[k.name], manifest, verify, "text") : Promise.resolve(null))));
      const programSource = sources.some((s) => s === null)
        ? await fetchFile(base, part.sources.program, manifest, verify, "text") : "";
      return { sources, programSource };
    }),
  ]);
  const weights = parseSafetensors(fetched[0], "weights.safetensors");
  const descs = parts.map((part, i) => describe(part.program, {
    ...part, ...fetched[i + 1], userCount: manifest.outputs.length }, weights));
  // the limits: each program at its largest sizes (the batch-MAX call, and batch 2's)
  const largest = dynamic ? [{ [dynamic.symbol]: dynamic.max }, { [dynamic.symbol]: 2 }] : [{}];
  const layouts = [...largest.map((env) => layoutOf(descs[0], env)),
                   ...descs.slice(1).map((d) => layoutOf(d, {}))];
  const required = needs(descs, layouts);

  if (!globalThis.navigator?.gpu) {
    throw new Error("neurenix: this browser has no WebGPU (navigator.gpu); use a browser with "
                    + "WebGPU enabled, over https or http://localhost");
  }
  const adapter = options.adapter ?? await navigator.gpu.requestAdapter(
    { powerPreference: options.powerPreference ?? "high-performance" });
  if (!adapter) throw new Error("neurenix: no WebGPU adapter (navigator.gpu.requestAdapter)");
  for (const [name, value] of Object.entries(required.limits)) {
    const have = adapter.limits[name];
    if (have !== undefined && value > have) {
      throw new Error(`neurenix: the program needs ${name} = ${value}, the adapter has ${have}`);
    }
  }
  const requiredLimits = {};
  for (const [name, value] of Object.entries(required.limits)) {
    if (adapter.limits[name] !== undefined) requiredLimits[name] = value;
  }
  for (const feature of required.features) {
    if (!adapter.features.has(feature)) {
      throw new Error(`neurenix: the program needs the WebGPU feature ${feature}`);
    }
  }
  const device = await adapter.requestDevice({ label: "neurenix", requiredLimits,
                                               requiredFeatures: required.features });
  const maxGroups = device.limits?.maxComputeWorkgroupsPerDimension ?? 65535;
  const shared = { buffers: [], tensors: new Map(), scratch: new Map() };
  device.pushErrorScope("validation");
  const runners = [];
  for (const desc of descs) runners.push(await instantiate(device, desc, shared, maxGroups));
  if (!dynamic) runners[0].call({});  // a fixed-shape program's buffers and bind groups now
  // the tensors readTensor reads: on the device where a binding or constant holds them
  const tensors = new Map(shared.tensors);
  for (const [key, t] of Object.entries(weights)) {
    if (!tensors.has(key)) tensors.set(key, { dtype: t.dtype, shape: t.shape, data: t.data });
  }
  const error = await device.popErrorScope();
  if (error) throw new Error(`neurenix: loading the program failed: ${error.message}`);

  const model = new Model({
    baseUrl: base, manifest, verify, device, adapterInfo: adapter.info ?? {},
    inputs: specs(manifest.inputs), outputs: specs(manifest.outputs), lost: null,
    steps: 0, maxBatch: dynamic ? dynamic.max : null, _symbol: dynamic?.symbol ?? null,
    _main: runners[0], _batch1: runners[1] ?? null,
    _states: descs[0].bound.filter((b) => b.state !== undefined).map((b) => ({ key: b.key })),
    _tensors: tensors, _buffers: shared.buffers,
  });
  device.lost.then((info) => { model.lost = info.message || info.reason || "lost"; });
  return model;
}
