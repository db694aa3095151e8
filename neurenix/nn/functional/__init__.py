"""`neurenix.nn.functional`: the stateless forms of the layers, as tensor compositions."""
from .activation import (
    elu,
    gelu,
    hardswish,
    hardtanh,
    leaky_relu,
    log_softmax,
    prelu,
    relu,
    relu6,
    selu,
    sigmoid,
    silu,
    softmax,
    softplus,
    tanh,
)
from .attention import multi_head_attention_forward, scaled_dot_product_attention
from .conv import (
    conv1d,
    conv2d,
    conv3d,
    conv_nd,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
)
from .distance import cosine_similarity, normalize, pairwise_distance
from .dropout import dropout, dropout2d
from .linear import linear
from .loss import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    huber_loss,
    kl_div,
    l1_loss,
    mse_loss,
    nll_loss,
    smooth_l1_loss,
    triplet_margin_loss,
)
from .normalization import batch_norm, group_norm, instance_norm, layer_norm
from .padding import pad
from .pooling import (
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    adaptive_max_pool1d,
    adaptive_max_pool2d,
    avg_pool1d,
    avg_pool2d,
    max_pool1d,
    max_pool2d,
    max_pool3d,
    max_pool_nd,
)
from .sparse import embedding, one_hot
from .upsampling import interpolate, pixel_shuffle, pixel_unshuffle
