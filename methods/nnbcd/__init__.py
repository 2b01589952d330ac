"""``nnbcd-tt`` and ``nnbcd-prune``: gradient-free block coordinate descent (NN-BCD).

Li, Chung, Du, Wang, Zhou, Shen, "On Model Compression for Neural Networks: Framework,
Algorithm, and Convergence Guarantee", arXiv 2303.06815. The paper's full text was not
available to us; the splitting below follows the three-splitting BCD of Zeng et al. (ICML
2019) that NN-BCD extends, with the compression term of the authors' released code, and is
what we implement (so the numbers are ours, not the paper's).

The package's modules, one job each: ``solver`` (the BCD objective and its block updates on a
ReLU MLP head: ``BCDProblem``), ``head`` (where NN-BCD applies: the trailing ReLU MLP of a
network), ``method`` (the two registered compressors: the sweep loop, its stopping rule and
defaults, the projections onto ``tt``'s format and onto a sparsity pattern).
"""
from __future__ import annotations

# importing ``method`` registers nnbcd-tt and nnbcd-prune; the other names stay importable from here
from methods.nnbcd.head import _capture_head_input, _is_replacement, mlp_head, mlp_skip_reason  # noqa: F401
from methods.nnbcd.method import _NNBCD, NNBCDPrune, NNBCDTensorTrain, _thin  # noqa: F401
from methods.nnbcd.solver import BCDProblem, head_forward, relu_prox  # noqa: F401
