"""discover_pairs: which Linear → homogeneous → Linear chains carry a law, and why others don't."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lradvisor.measure.discovery import Discovery, LawPair, discover_pairs


def _pair_names(discovery: Discovery) -> list[tuple[str, str]]:
    return [(p.in_layer_name, p.out_layer_name) for p in discovery.pairs]


def _reason(discovery: Discovery, module_name: str) -> str:
    reasons = dict(discovery.skipped)
    assert module_name in reasons, f"{module_name} not in skipped {discovery.skipped}"
    return reasons[module_name]


class FunctionalMLP(nn.Module):
    """Custom forward with functional and method activations, nested block, no Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.block = nn.ModuleDict({"inner": nn.Linear(8, 8, bias=False)})
        self.fc3 = nn.Linear(8, 8)
        self.fc4 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = self.block["inner"](h).relu()
        h = torch.relu(self.fc3(h))
        h = F.leaky_relu(self.fc4(h), negative_slope=0.2)
        return self.head(h)


def test_custom_module_with_functional_relu_is_traced():
    discovery = discover_pairs(FunctionalMLP())
    assert discovery.method == "fx"
    assert discovery.pairs == (
        LawPair("fc1->block.inner", "fc1", "block.inner", "ReLU", True),
        LawPair("block.inner->fc3", "block.inner", "fc3", "ReLU", False),
        LawPair("fc3->fc4", "fc3", "fc4", "ReLU", True),
        LawPair("fc4->head", "fc4", "head", "LeakyReLU(0.2)", True),
    )
    assert discovery.skipped == ()


class ResidualMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = h + self.fc2(F.relu(self.fc1(h)))
        return self.head(h)


def test_residual_branch_is_not_paired_across_the_add():
    discovery = discover_pairs(ResidualMLP())
    assert _pair_names(discovery) == [("fc1", "fc2")]
    assert "fc2" not in {p.in_layer_name for p in discovery.pairs}
    assert _reason(discovery, "stem") == "Linear: output of relu used by 2 consumers (fc1, add)"
    assert "model output" in _reason(discovery, "head")
    assert any(
        note.startswith("fc2: out-layer of a law but starts none") for note in discovery.notes
    )
    assert "residual" in discovery.notes[0]


class NormGeluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 8)
        self.act = nn.GELU()
        self.fc3 = nn.Linear(8, 8, bias=False)
        self.fc4 = nn.Linear(8, 2)

    def forward(self, x):
        h = self.norm(self.fc1(x))
        h = self.act(self.fc2(h))
        return self.fc4(F.relu(self.fc3(h)))


def test_layer_norm_and_gelu_are_skipped_with_reasons():
    discovery = discover_pairs(NormGeluNet())
    assert _pair_names(discovery) == [("fc3", "fc4")]
    assert not discovery.pairs[0].bias_aware
    assert _reason(discovery, "norm") == (
        "LayerNorm: normalisation, scale-invariant not rescaling-symmetric"
    )
    assert "feeds LayerNorm 'norm': normalisation" in _reason(discovery, "fc1")
    assert _reason(discovery, "fc2") == "GELU after fc2: activation not positively homogeneous"


def test_functional_tanh_is_not_homogeneous():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3, 5), nn.Linear(5, 1)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))

    discovery = discover_pairs(Net())
    assert discovery.pairs == ()
    assert _reason(discovery, "fc1") == "tanh after fc1: activation not positively homogeneous"


def test_sequential_with_dropout_between_is_paired():
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 8), nn.Identity(), nn.Linear(8, 2)
    )
    discovery = discover_pairs(model)
    assert discovery.pairs == (
        LawPair("0->3", "0", "3", "ReLU+Dropout(p=0.1)", True),
        LawPair("3->5", "3", "5", "identity", True),
    )


def test_convolution_attention_and_prelu_inside_a_law():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)
            self.attn = nn.MultiheadAttention(8, 2)
            self.fc1, self.act, self.fc2 = nn.Linear(4, 8), nn.PReLU(), nn.Linear(8, 2)

        def forward(self, x, image):
            return self.fc2(self.act(self.fc1(x))), self.conv(image)

    discovery = discover_pairs(Net())
    assert discovery.pairs == (LawPair("fc1->fc2", "fc1", "fc2", "PReLU", True),)
    skipped = dict(discovery.skipped)
    assert skipped["conv"] == "Conv2d: convolution not analysed (Linear layers only)"
    assert skipped["attn"] == "MultiheadAttention: not analysed"
    assert "attn.out_proj" not in skipped  # implied by its parent
    assert "act" not in skipped


def test_reused_or_tied_linear_is_not_paired():
    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.shared, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1)

        def forward(self, x):
            return self.head(F.relu(self.shared(F.relu(self.shared(F.relu(self.fc1(x)))))))

    discovery = discover_pairs(Reused())
    assert discovery.pairs == ()
    assert _reason(discovery, "shared") == "Linear: called 2 times in forward (reused)"
    assert _reason(discovery, "fc1") == (
        "Linear: feeds shared, no law (Linear: called 2 times in forward (reused))"
    )

    tied = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    tied[2].weight = tied[0].weight
    discovery = discover_pairs(tied)
    assert _pair_names(discovery) == []
    assert _reason(discovery, "0") == "Linear: parameters shared with 2"


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else x


def test_untraceable_sequential_falls_back_to_registration_order():
    model = nn.Sequential(
        nn.Linear(3, 4), nn.ReLU(), DataDependent(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1)
    )
    discovery = discover_pairs(model)
    assert discovery.method == "sequential-order"
    assert _pair_names(discovery) == [("3", "5")]
    assert "could not trace Sequential" in discovery.notes[0]
    assert "registration order" in discovery.notes[0]
    assert "DataDependent '2'" in _reason(discovery, "0")
    assert _reason(discovery, "2.fc") == (
        "Linear: inside DataDependent '2', which could not be traced"
    )


def test_untraceable_custom_module_has_no_laws_and_says_why():
    discovery = discover_pairs(DataDependent())
    assert discovery.method == "none"
    assert discovery.pairs == ()
    assert discovery.skipped == (("fc", "Linear: not analysed (tracing failed)"),)
    assert "could not trace DataDependent" in discovery.notes[0]


@pytest.mark.parametrize("bias", [True, False])
def test_bias_awareness_follows_the_in_layer_only(bias):
    model = nn.Sequential(nn.Linear(3, 4, bias=bias), nn.ReLU(), nn.Linear(4, 1, bias=not bias))
    (pair,) = discover_pairs(model).pairs
    assert pair.bias_aware is bias


def test_unused_linear_is_reported():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.spare = nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(4, 4)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x)))

    discovery = discover_pairs(Net())
    assert _pair_names(discovery) == [("fc1", "fc2")]
    assert discovery.skipped == (("spare", "Linear: not called in forward"),)
    assert discovery.skipped_text() == "spare (Linear: not called in forward)"
