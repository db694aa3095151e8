"""The default model of `neurenix-compile`: an MLP 784-512-512-10 on a batch of 64.

    neurenix-compile examples/mlp.py --check
"""
import neurenix
from neurenix.nn import Linear, ReLU, Sequential

neurenix.manual_seed(0)
model = Sequential(Linear(784, 512), ReLU(), Linear(512, 512), ReLU(), Linear(512, 10))
example_inputs = (neurenix.randn(64, 784),)
