"""From graphs to kernels: fusion groups nodes, `lower` turns each group into a kernel, and
`index` folds views into index expressions with the symbolic index algebra."""
