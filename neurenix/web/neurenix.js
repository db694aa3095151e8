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

/** The model's inputs and outputs as `{name, shape, dtype}`. */
function specs(list) {
  return list.map((t) => ({ name: t.name, shape: [...t.shape], dtype: t.dtype }));
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

  /** The outputs (one TypedArray each, `model.outputs` says their shapes and dtypes) for
   * `inputs` (one TypedArray or array of numbers each, in `model.inputs` order, flattened
   * in C order).  For a training artifact, a run that passes its checks then commits the new
   * state (`model.steps` counts these runs); one that fails a check rejects and commits
   * nothing. */
  run(inputs) {
    return this._queued(() => this._run(inputs));
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

  _queued(work) {
    const result = this._queue.then(work);
    this._queue = result.catch(() => {});
    return result;
  }

  async _run(inputs) {
    if (this.lost) throw new Error(`neurenix: the WebGPU device was lost: ${this.lost}`);
    if (!Array.isArray(inputs) || inputs.length !== this.inputs.length) {
      const names = this.inputs.map((t) => t.name).join(", ");
      throw new Error(`neurenix: the model takes ${this.inputs.length} inputs (${names}), got `
                      + `${Array.isArray(inputs) ? inputs.length : typeof inputs}`);
    }
    const { device } = this;
    const bytes = inputs.map((x, k) => {
      const spec = this.inputs[k];
      return toStorage(x, spec.dtype, numel(spec.shape), `input ${spec.name}`);
    });
    for (const [buffer, k] of this._inputBuffers) device.queue.writeBuffer(buffer, 0, bytes[k]);
    for (const { buffer, seed } of this._seeds) {
      const value = BigInt.asIntN(64, seed + BigInt(this.steps));
      device.queue.writeBuffer(buffer, 0, new BigInt64Array([value]));
    }
    // without checks the state is committed in the same submission (after the outputs are
    // copied out: an output that names a state input reads its value before the run)
    const commitNow = this._checks.length === 0;
    this._submit((encoder) => {
      if (this._launches.length) {
        const pass = encoder.beginComputePass();
        for (const launch of this._launches) {
          pass.setPipeline(launch.pipeline);
          pass.setBindGroup(0, launch.group);
          pass.dispatchWorkgroups(...launch.grid);
        }
        pass.end();
      }
      for (const copy of this._copies) {
        if (copy.size) encoder.copyBufferToBuffer(copy.buffer, copy.offset, this._staging,
                                                  copy.to, copy.size);
      }
      if (commitNow) this._commit(encoder);
    });
    const popped = await this._popErrors();
    if (popped) throw new Error(`neurenix: the submission failed: ${popped.message}`);
    await this._staging.mapAsync(GPUMapMode.READ);
    let raw;
    try {
      raw = this._staging.getMappedRange().slice(0);
    } finally {
      this._staging.unmap();
    }
    const value = (j) => {
      const spec = this._programOutputs[j];
      return { value: fromStorage(raw, this._stagingAt.get(j), 1, spec.dtype)[0],
               dtype: spec.dtype };
    };
    const failed = failedCheck(this._checks, value);
    if (failed) throw failed;
    if (!commitNow && this._stateCopies.length) {
      this._submit((encoder) => this._commit(encoder));
      const error = await this._popErrors();
      if (error) throw new Error(`neurenix: committing the state failed: ${error.message}`);
    }
    this.steps += 1;
    return this.outputs.map((spec, k) => fromStorage(raw, this._stagingAt.get(k),
                                                     numel(spec.shape), spec.dtype));
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

  /** Record the copies that make the new state values (program outputs) the current state:
   * first those whose source is itself a state input into scratch buffers (so that a state
   * fed from another state's old value gets that old value), then into the state inputs. */
  _commit(encoder) {
    for (const c of this._stateCopies) {
      if (c.scratch) encoder.copyBufferToBuffer(c.buffer, c.offset, c.scratch, 0, c.size);
    }
    for (const c of this._stateCopies) {
      if (c.scratch) encoder.copyBufferToBuffer(c.scratch, 0, c.to, 0, c.size);
      else encoder.copyBufferToBuffer(c.buffer, c.offset, c.to, 0, c.size);
    }
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

/** The limits a program needs from the device (WebGPU names), and its features. */
function needs(program, kernels, sizes) {
  const limits = {};
  const need = (name, value) => { limits[name] = Math.max(limits[name] ?? 0, value); };
  for (const [name, value] of Object.entries(program.metadata?.required_limits ?? {})) {
    need(camel(name), Number(value));
  }
  for (const k of kernels) {
    const block = k.block.length ? k.block : [1];
    need("maxComputeWorkgroupSizeX", block[0] ?? 1);
    need("maxComputeWorkgroupSizeY", block[1] ?? 1);
    need("maxComputeWorkgroupSizeZ", block[2] ?? 1);
    need("maxComputeInvocationsPerWorkgroup", numel(block));
    need("maxComputeWorkgroupsPerDimension", Math.max(1, ...k.grid));
    need("maxStorageBuffersPerShaderStage", k.declared.size);
    need("maxBindingsPerBindGroup", Math.max(0, ...k.declared.keys()) + 1);
  }
  need("maxStorageBufferBindingSize", sizes.binding);
  need("maxBufferSize", sizes.buffer);
  const features = kernels.some((k) => /\benable\s+f16\s*;/.test(k.source)) ? ["shader-f16"] : [];
  return { limits, features };
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
  const program = manifest.program;
  const storage = program.metadata?.storage ?? STORAGE;
  if (JSON.stringify(storage) !== JSON.stringify(STORAGE)) {
    throw new Error(`manifest.json: the program stores ${JSON.stringify(storage)}, this loader `
                    + `${JSON.stringify(STORAGE)}`);
  }
  for (const t of [...program.inputs, ...program.outputs, ...program.buffers]) {
    if (t.dtype === "float64") {
      throw new Error(`manifest.json: ${t.name} is float64, which WebGPU does not have`);
    }
  }
  const files = manifest.sources.kernels ?? {};
  const [weightsData, ...sources] = await Promise.all([
    fetchFile(base, "weights.safetensors", manifest, verify),
    ...program.kernels.map((k) => (files[k.name]
      ? fetchFile(base, files[k.name], manifest, verify, "text") : Promise.resolve(null))),
  ]);
  const weights = parseSafetensors(weightsData, "weights.safetensors");
  const programSource = sources.some((s) => s === null)
    ? await fetchFile(base, manifest.sources.program, manifest, verify, "text") : "";

  const kinds = new Map(program.buffers.map((b) => [b.name, b]));
  const temps = new Map();
  for (const b of program.buffers.filter((b) => b.kind === "temp")) {
    temps.set(b.name, [b.offset, Math.max(4, ceil4(storedBytes(b.size, b.dtype)))]);
  }
  const arenaBytes = ceil4(Math.max(program.arena_bytes, 4,
                                    ...[...temps.values()].map(([o, s]) => o + s)));
  const written = new Map();
  for (const b of program.buffers.filter((b) => b.kind === "output")) {
    const spec = program.outputs.find((t) => t.name === b.name);
    written.set(b.name, { count: spec ? numel(spec.shape) : b.size, dtype: b.dtype });
  }
  const inputIndex = new Map(program.inputs.map((t, k) => [t.name, k]));
  if (manifest.bindings.length !== program.inputs.length) {
    throw new Error(`manifest.json: ${manifest.bindings.length} bindings for `
                    + `${program.inputs.length} program inputs`);
  }
  const constants = new Map();
  for (const name of program.constants) {
    const tensor = weights[`const:${name}`];
    if (!tensor) throw new Error(`weights.safetensors: has no tensor const:${name}`);
    constants.set(name, tensor);
  }
  const sameSpec = (a, b) => a.dtype === b.dtype && a.shape.join() === b.shape.join();
  const outputCount = program.outputs.length;
  const bound = program.inputs.map((spec, k) => {
    const binding = manifest.bindings[k];
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
  const checks = manifest.checks ?? [];
  if (!Array.isArray(checks)) throw new Error("manifest.json: checks is not a list");
  for (const check of checks) {
    if (check.kind !== "range") {
      throw new Error(`manifest.json: a check of kind ${JSON.stringify(check.kind)}, which `
                      + "this loader does not know");
    }
    for (const j of [check.lo, check.hi]) {
      if (!Number.isInteger(j) || j < 0 || j >= outputCount
          || numel(program.outputs[j].shape) !== 1) {
        throw new Error(`manifest.json: a range check reads program output ${j}, which is not `
                        + "a single value");
      }
    }
  }
  const userCount = manifest.outputs.length;
  if (userCount > outputCount) {
    throw new Error(`manifest.json: ${userCount} model outputs, the program has ${outputCount}`);
  }
  // the program outputs read back after each run: the model's, then the checks' values
  const readback = [...new Set([...Array(userCount).keys(),
                                ...checks.flatMap((c) => [c.lo, c.hi])])];

  const kernels = [];
  program.kernels.forEach((info, k) => {
    const grid = info.grid.length ? info.grid : [1];
    const block = info.grid.length ? info.block : [1];
    if (grid.includes(0)) return;
    if (grid.length > 3) throw new Error(`kernel ${info.name}: a ${grid.length}-d grid`);
    let source = sources[k] ?? programSource;
    const promote = arenaPromotions(info.args, declaredBindings(source), temps);
    if (promote.size) source = writable(source, promote);
    kernels.push({ info, source, declared: declaredBindings(source), block,
                   grid: [...grid, 1, 1].slice(0, 3) });
  });
  const bindingSizes = [
    ...[...temps.values()].map(([, s]) => s),
    ...program.inputs.map((t) => deviceBytes(numel(t.shape), t.dtype)),
    ...[...written.values()].map((w) => deviceBytes(w.count, w.dtype)),
    ...[...constants.values()].map((c) => deviceBytes(c.data.length, c.dtype)),
  ];
  const stagingAt = new Map();
  let stagingBytes = 0;
  for (const j of readback) {
    stagingAt.set(j, stagingBytes);
    stagingBytes += ceil4(storedBytes(numel(program.outputs[j].shape), program.outputs[j].dtype));
  }
  const required = needs(program, kernels, {
    binding: Math.max(4, ...bindingSizes),
    buffer: Math.max(4, arenaBytes, stagingBytes, ...bindingSizes),
  });

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
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const buffers = [];
  const create = (size, label, use = usage) => {
    const buffer = device.createBuffer({ size: Math.max(4, ceil4(size)), usage: use, label });
    buffers.push(buffer);
    return buffer;
  };
  const upload = (name, dtype, data) => {
    const bytes = toStorage(data, dtype, data.length, name);
    const buffer = create(bytes.byteLength, name);
    device.queue.writeBuffer(buffer, 0, bytes);
    return buffer;
  };

  device.pushErrorScope("validation");
  const arena = create(arenaBytes, "arena");
  const constantBuffers = new Map();
  for (const [name, c] of constants) constantBuffers.set(name, upload(name, c.dtype, c.data));
  const programInputs = bound.map(({ spec, tensor }) => (tensor
    ? upload(spec.name, spec.dtype, tensor.data)
    : create(deviceBytes(numel(spec.shape), spec.dtype), spec.name)));
  const inputBuffers = bound.flatMap(({ input }, k) => (
    input === undefined ? [] : [[programInputs[k], input]]));
  const writtenBuffers = new Map();
  for (const [name, w] of written) {
    writtenBuffers.set(name, create(deviceBytes(w.count, w.dtype), name));
  }
  const staging = create(stagingBytes, "staging",
                         GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);

  const whole = (buffer) => ({ buffer, offset: 0, size: buffer.size });
  const launches = await Promise.all(kernels.map(async ({ info, source, declared, grid }) => {
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
      groupLayout = device.createBindGroupLayout({
        label: info.name,
        entries: [...declared.entries()].sort((a, b) => a[0] - b[0]).map(([i, readOnly]) => ({
          binding: i, visibility: GPUShaderStage.COMPUTE,
          buffer: { type: readOnly ? "read-only-storage" : "storage" } })),
      });
      layout = device.createPipelineLayout({ bindGroupLayouts: [groupLayout] });
    }
    let pipeline;
    try {
      pipeline = await device.createComputePipelineAsync({
        label: info.name, layout, compute: { module, entryPoint: info.name } });
    } catch (e) {
      throw new Error(`neurenix: kernel ${info.name} does not compile: ${e.message ?? e}`);
    }
    groupLayout ??= pipeline.getBindGroupLayout(0);
    const entries = [];
    info.args.forEach((name, i) => {
      if (declared.size && !declared.has(i)) return;
      let resource;
      const kind = kinds.get(name)?.kind;
      if (inputIndex.has(name) && (kind ?? "input") === "input") {
        resource = whole(programInputs[inputIndex.get(name)]);
      } else if (kind === "output") {
        resource = whole(writtenBuffers.get(name));
      } else if (temps.has(name)) {
        const [offset, size] = temps.get(name);
        resource = { buffer: arena, offset, size };
      } else if (constantBuffers.has(name)) {
        resource = whole(constantBuffers.get(name));
      } else {
        throw new Error(`neurenix: kernel ${info.name} takes ${name}, which is no input, `
                        + "output, constant or temp of the program");
      }
      entries.push({ binding: i, resource });
    });
    const group = device.createBindGroup({ label: info.name, layout: groupLayout, entries });
    return { name: info.name, pipeline, group, grid };
  }));

  /** Where program output j lives: {buffer, offset, size} (size: its bytes, padded to 4). */
  const located = (j) => {
    const spec = program.outputs[j];
    const name = spec.name;
    const size = ceil4(storedBytes(numel(spec.shape), spec.dtype));
    let buffer;
    let offset = 0;
    if (writtenBuffers.has(name)) buffer = writtenBuffers.get(name);
    else if (constantBuffers.has(name)) buffer = constantBuffers.get(name);
    else if (temps.has(name)) [offset] = temps.get(name);
    else if (inputIndex.has(name)) buffer = programInputs[inputIndex.get(name)];
    else throw new Error(`neurenix: output ${name} is not a buffer of the program`);
    return { buffer: buffer ?? arena, offset, size };
  };
  const copies = readback.map((j) => ({ ...located(j), to: stagingAt.get(j) }));
  const stateInputs = new Set(bound.flatMap((b, k) => (b.state === undefined ? []
    : [programInputs[k]])));
  const stateCopies = [];
  bound.forEach((b, k) => {
    if (b.state === undefined) return;
    const from = located(b.state);
    const to = programInputs[k];
    if (!from.size || (from.buffer === to && from.offset === 0)) return;  // unchanged
    const scratch = stateInputs.has(from.buffer) ? create(from.size, `${b.key} (next)`) : null;
    stateCopies.push({ ...from, to, scratch });
  });
  const seeds = bound.flatMap((b, k) => (b.seed === undefined ? []
    : [{ buffer: programInputs[k], seed: b.seed }]));
  // the tensors readTensor reads: on the device where a binding or constant holds them
  const tensors = new Map();
  bound.forEach((b, k) => {
    if (b.key !== undefined && !tensors.has(b.key)) {
      tensors.set(b.key, { dtype: b.spec.dtype, shape: [...b.spec.shape],
                           buffer: programInputs[k] });
    }
  });
  for (const [name, c] of constants) {
    const key = `const:${name}`;
    if (!tensors.has(key)) {
      tensors.set(key, { dtype: c.dtype, shape: [...c.shape],
                         buffer: constantBuffers.get(name) });
    }
  }
  for (const [key, t] of Object.entries(weights)) {
    if (!tensors.has(key)) tensors.set(key, { dtype: t.dtype, shape: t.shape, data: t.data });
  }
  const error = await device.popErrorScope();
  if (error) throw new Error(`neurenix: loading the program failed: ${error.message}`);

  const model = new Model({
    baseUrl: base, manifest, verify, device, adapterInfo: adapter.info ?? {},
    inputs: specs(manifest.inputs), outputs: specs(manifest.outputs), lost: null,
    steps: 0, _programOutputs: specs(program.outputs), _checks: checks,
    _states: bound.filter((b) => b.state !== undefined).map((b) => ({ key: b.key })),
    _launches: launches, _copies: copies, _staging: staging, _stagingAt: stagingAt,
    _inputBuffers: inputBuffers, _seeds: seeds, _stateCopies: stateCopies, _tensors: tensors,
    _buffers: buffers,
  });
  device.lost.then((info) => { model.lost = info.message || info.reason || "lost"; });
  return model;
}
