"""The compile machinery behind `neurenix.compile`: trace, guard, build, cache, run.

`tracing` (the active trace the layers below hand their work to) <- `trace_effects` (what a
traced function does besides computing), `trace_guards` (what a program silently depends on),
`value_checks` (value-dependent errors after each call) <- `executables` (build and load a
traced graph's programs through `compile_cache`, the disk cache) <- `compiled` (the
`Compiled` callable: signatures, the in-memory program cache, running), with `arguments`
(flattening call arguments and results) and `signatures` (call keys and recompile reasons).
The package imports the frontend below it (tensors, nn, optim), never the other way round.
"""
