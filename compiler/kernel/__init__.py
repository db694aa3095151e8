"""The kernel level: the kernel IR every generator reads (`ir`), its reference evaluator
(`eval`) and memory planning over a kernel schedule (`memory`)."""
