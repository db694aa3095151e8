"""The graph level: the IR (`ir`), its text form (`text`), builders, the reference evaluator
(`graph_builder.evaluate`), and the pattern/rewrite engine the graph passes use."""
