"""`neurenix.nn.functional`: the stateless forms of the layers, as tensor compositions."""
from .activation import elu, gelu, leaky_relu, log_softmax, relu, selu, sigmoid, softmax, tanh
from .conv import conv1d, conv2d, conv3d, conv_nd
from .dropout import dropout
from .linear import linear
from .loss import (
                         binary_cross_entropy,
                         binary_cross_entropy_with_logits,
                         cross_entropy,
                         l1_loss,
                         mse_loss,
                         nll_loss,
)
from .normalization import batch_norm, layer_norm
from .padding import pad
from .pooling import adaptive_avg_pool2d, avg_pool2d, max_pool1d, max_pool2d, max_pool_nd
from .sparse import embedding, one_hot
