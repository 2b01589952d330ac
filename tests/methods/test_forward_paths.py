"""Which forward a factorised Linear takes (contract the input through the factors, or form the
matrix) and that both give the same output; CP's paired matrix formed from two balanced halves."""
import torch
import torch.nn as nn

from bench.registry import get_method
from methods._tensorize import CHAIN_FLOP_COST, from_paired
from methods.cp import khatri_rao


def _paths(layer, x):
    """(output, which path ran) of one forward."""
    ran = []
    contract, matrix = layer.contract, layer.matrix
    layer.contract = lambda x2: ran.append("chain") or contract(x2)
    layer.matrix = lambda: ran.append("formed") or matrix()
    y = layer(x)
    return y, ran


def test_tt_contracts_only_where_the_chain_is_cheaper_even_memory_bound():
    torch.manual_seed(0)
    lin = nn.Linear(625, 512).double()  # modes (5, 5, 5, 5) x (4, 4, 8, 4)-ish, big enough to contract
    x = torch.randn(64, 625, dtype=torch.float64)
    tt = get_method("tt")
    seen = {}
    for rank in (1, 8):
        layer = tt.factorize(lin, rank).double()
        y, ran = _paths(layer, x)
        ratio = (layer._form_flops + 64 * layer.m * layer.n) / (64 * layer._contract_flops)
        seen[rank] = (list(ran), ratio)
        assert ran == (["chain"] if ratio > CHAIN_FLOP_COST else ["formed"])
        dense = nn.functional.linear(x, layer.effective_weight().reshape(512, 625), layer.bias)
        assert torch.allclose(y, dense, rtol=1e-10, atol=1e-10)
    assert seen[1][0] == ["chain"] and seen[8][0] == ["formed"]
    assert 1 < seen[8][1] < CHAIN_FLOP_COST  # fewer flops, still formed: the rule, not the flop count


def test_cp_paired_matrix_from_balanced_halves_is_the_sequential_sum():
    torch.manual_seed(0)
    lin = nn.Linear(256, 512).double()
    cp = get_method("cp", layout="paired")
    for rank in (1, 7, 40):
        layer = cp.factorize(lin, rank).double()
        *rest, last = layer.factors
        sequential = from_paired(khatri_rao(rest) @ last.t(), layer.out_modes, layer.in_modes)
        assert 1 <= layer._half < len(layer.factors)
        assert torch.allclose(layer.effective_weight(), sequential, rtol=1e-12, atol=1e-12)
