"""The only package that builds Flax layers; everything else composes these."""

from nclm.nn.activations import Snake
from nclm.nn.conv import Conv1d, ConvTranspose1d, conv_output_length, conv_transpose_output_length
from nclm.nn.conv2d import Conv2d, conv2d_output_shape
from nclm.nn.convnext import ConvNeXtBlock
from nclm.nn.lstm import LSTMLayer, ResidualLSTM
from nclm.nn.norms import AdaLayerNorm
from nclm.nn.projection import Projection

__all__ = [
    "AdaLayerNorm",
    "Conv1d",
    "Conv2d",
    "ConvNeXtBlock",
    "ConvTranspose1d",
    "LSTMLayer",
    "Projection",
    "ResidualLSTM",
    "Snake",
    "conv2d_output_shape",
    "conv_output_length",
    "conv_transpose_output_length",
]
