"""The scalar autodiff engine of notebook 12, taken out of the notebook and tested on its own.

The notebook's code cells tagged ``engine`` are executed, in order, into a fresh namespace. The
engine's gradients are then compared with independent references: ``gradbook.MLP`` (the numpy
backpropagation of notebook 08), central differences, and derivatives written by hand. A few
deliberately broken copies of the engine check that these comparisons catch a wrong rule.
(The notebook as a whole runs in tests/test_notebooks.py.)
"""

from __future__ import annotations

import ast
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradbook import MLP, gradcheck, numerical_gradient, relative_error, sigmoid

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "12_autodiff.ipynb"
EPS = 1e-5  # central-difference step, as in notebooks 08 and 12
FD_TOL = 1e-7  # engine vs central differences
EXACT_TOL = 1e-10  # engine vs the same arithmetic done another way (MLP, hand formulas)

Namespace = dict[str, Any]


def engine_sources() -> list[str]:
    """The sources of the notebook's code cells tagged ``engine``, in notebook order."""
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    return ["".join(cell["source"]) for cell in nb["cells"]
            if cell["cell_type"] == "code" and "engine" in cell["metadata"].get("tags", [])]


def load_engine(replace: tuple[str, str] | None = None) -> Namespace:
    """Execute the engine cells into a new namespace, optionally with one substring replaced."""
    sources = engine_sources()
    if replace is not None:
        old, new = replace
        hits = [i for i, source in enumerate(sources) if old in source]
        assert len(hits) == 1 and sources[hits[0]].count(old) == 1, f"not exactly once: {old!r}"
        sources[hits[0]] = sources[hits[0]].replace(old, new)
    namespace: Namespace = {"__name__": "notebook_12_engine"}
    for source in sources:
        exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def engine() -> Namespace:
    return load_engine()


def test_engine_cells_are_self_contained():
    """The engine cells import only numpy and the standard library, and define the engine."""
    sources = engine_sources()
    assert len(sources) >= 2
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top == "numpy" or top in sys.stdlib_module_names, f"imports {module}"
    names = load_engine()
    for name in ("Value", "topological_order", "maximum", "leaves", "grad_array", "network_loss"):
        assert name in names, name


# -- one operation at a time ---------------------------------------------------------------------

# name: (the operation on engine values, the same on floats, how to draw its inputs)
Draw = Callable[[np.random.Generator], list[float]]


def _away_from_zero(rng: np.random.Generator, k: int) -> list[float]:
    return list(rng.choice([-1.0, 1.0], size=k) * rng.uniform(0.2, 3.0, size=k))


OPERATIONS: dict[str, tuple[Callable[..., Any], Callable[..., float], Draw]] = {
    "a + b": (lambda a, b: a + b, lambda a, b: a + b, lambda r: list(r.normal(size=2))),
    "a * b": (lambda a, b: a * b, lambda a, b: a * b, lambda r: list(r.normal(size=2))),
    "a - b": (lambda a, b: a - b, lambda a, b: a - b, lambda r: list(r.normal(size=2))),
    "a / b": (lambda a, b: a / b, lambda a, b: a / b, lambda r: _away_from_zero(r, 2)),
    "2.5 - a": (lambda a: 2.5 - a, lambda a: 2.5 - a, lambda r: list(r.normal(size=1))),
    "2.5 / a": (lambda a: 2.5 / a, lambda a: 2.5 / a, lambda r: _away_from_zero(r, 1)),
    "-a": (lambda a: -a, lambda a: -a, lambda r: list(r.normal(size=1))),
    "(a)^3": (lambda a: a**3, lambda a: a**3, lambda r: list(r.normal(size=1))),
    "(a)^-2": (lambda a: a**-2, lambda a: a**-2, lambda r: _away_from_zero(r, 1)),
    "(a)^0.5": (lambda a: a**0.5, math.sqrt, lambda r: list(r.uniform(0.3, 4.0, size=1))),
    "exp": (lambda a: a.exp(), math.exp, lambda r: list(r.normal(size=1))),
    "log": (lambda a: a.log(), math.log, lambda r: list(r.uniform(0.2, 5.0, size=1))),
    "sigmoid": (lambda a: a.sigmoid(), lambda a: 1.0 / (1.0 + math.exp(-a)),
                lambda r: list(r.normal(scale=3.0, size=1))),
    "tanh": (lambda a: a.tanh(), math.tanh, lambda r: list(r.normal(scale=2.0, size=1))),
    "relu": (lambda a: a.relu(), lambda a: max(a, 0.0), lambda r: _away_from_zero(r, 1)),
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_operation_against_its_float_version(engine: Namespace, name: str, seed: int):
    """Value and gradient of every operation, against the same operation on floats and its
    central differences, at random points (several per seed)."""
    Value = engine["Value"]
    on_values, on_floats, draw = OPERATIONS[name]
    rng = np.random.default_rng(seed)
    for _ in range(5):
        point = np.array(draw(rng))
        inputs = [Value(x) for x in point]
        out = on_values(*inputs)
        out.backward()
        assert out.data == pytest.approx(on_floats(*point), rel=1e-12, abs=1e-14)
        numeric = numerical_gradient(lambda point=point: on_floats(*point), point, EPS)
        assert relative_error([v.grad for v in inputs], numeric) < FD_TOL, (name, point)


def test_sigmoid_does_not_overflow(engine: Namespace):
    Value = engine["Value"]
    for x in (-800.0, -40.0, 0.0, 40.0, 800.0):
        v = Value(x)
        s = v.sigmoid()
        s.backward()
        assert s.data == pytest.approx(float(sigmoid(np.array([x]))[0]), rel=1e-12, abs=0.0)
        assert v.grad == pytest.approx(s.data * (1.0 - s.data), abs=1e-300)


# -- the backward rule ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_paths_add_up_at_a_fork(engine: Namespace, seed: int):
    """Values used more than once get the sum of their paths' gradients (12.1)."""
    Value = engine["Value"]
    a0, b0 = np.random.default_rng(seed).uniform(0.5, 2.0, size=2)
    a, b = Value(a0), Value(b0)
    L = a * a * a + a * b + (a * b).exp()  # a is used five times, b twice, a * b twice
    L.backward()
    assert a.grad == pytest.approx(3 * a0**2 + b0 + b0 * math.exp(a0 * b0), rel=1e-12)
    assert b.grad == pytest.approx(a0 + a0 * math.exp(a0 * b0), rel=1e-12)
    shared = a * b  # one value feeding two children (a diamond)
    L = shared.sigmoid() + shared.tanh()
    L.backward()
    s, t = 1 / (1 + math.exp(-a0 * b0)), math.tanh(a0 * b0)
    assert shared.grad == pytest.approx(s * (1 - s) + 1 - t * t, rel=1e-12)
    assert a.grad == pytest.approx(shared.grad * b0, rel=1e-12)


def test_backward_twice_gives_the_same_gradients(engine: Namespace):
    """``backward`` starts from zero each time, so calling it again changes nothing."""
    Value = engine["Value"]
    x, w = Value(0.7), Value(-1.3)
    L = (x * w).tanh() * x
    L.backward()
    first = (x.grad, w.grad)
    L.backward()
    assert (x.grad, w.grad) == first


def test_topological_order_puts_every_value_after_its_parents(engine: Namespace):
    Value, order_of = engine["Value"], engine["topological_order"]
    x, y = Value(1.0), Value(2.0)
    u = x * y
    L = (u + x).exp() * u - y
    order = order_of(L)
    assert order[-1] is L and len(order) == len(set(order))
    position = {v: i for i, v in enumerate(order)}
    for v in order:
        for parent in v.parents:
            assert position[parent] < position[v]
    assert {x, y, u} <= set(order)


def test_a_chain_deeper_than_the_recursion_limit(engine: Namespace):
    """A sum of many values is a chain that deep; the order is found without recursion."""
    Value, total = engine["Value"], engine["total"]
    xs = [Value(float(i)) for i in range(3 * sys.getrecursionlimit())]
    L = total(xs)
    L.backward()
    assert L.data == sum(range(len(xs)))
    assert all(x.grad == 1.0 for x in xs)


# -- the gate patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gate_patterns(engine: Namespace, seed: int):
    """Add distributes, multiply swaps, max routes, with a random upstream gradient."""
    Value, maximum = engine["Value"], engine["maximum"]
    rng = np.random.default_rng(seed)
    a0, b0 = rng.normal(size=2)
    upstream = float(rng.normal())
    if a0 == b0:
        b0 += 1.0
    for gate, expected in [
        (lambda a, b: a + b, (upstream, upstream)),
        (lambda a, b: a * b, (upstream * b0, upstream * a0)),
        (maximum, (upstream, 0.0) if a0 > b0 else (0.0, upstream)),
        (lambda a, b: maximum(b, a), (upstream, 0.0) if a0 > b0 else (0.0, upstream)),
    ]:
        a, b = Value(a0), Value(b0)
        (upstream * gate(a, b)).backward()
        assert (a.grad, b.grad) == pytest.approx(expected, rel=1e-15)
    tie_a, tie_b = Value(1.0), Value(1.0)
    maximum(tie_a, tie_b).backward()
    assert tie_a.grad + tie_b.grad == 1.0  # a tie routes the whole gradient to one input


# -- networks ------------------------------------------------------------------------------------

ARCHITECTURES = [[3, 2], [2, 4, 3], [4, 3, 5, 2], [1, 6, 2, 3]]  # depths 1, 2, 3, 3


def random_case(sizes: list[int], activation: str, loss: str, bias: bool, n: int,
                rng: np.random.Generator) -> tuple[MLP, np.ndarray, np.ndarray]:
    """An MLP with random weights and biases, a batch X (n, d_0) and targets Y (n, d_K), drawn
    again while every gradient is zero (all relu outputs dead), which would compare nothing."""
    for _ in range(100):
        net = MLP(sizes, activation=activation, loss=loss, bias=bias,
                  seed=int(rng.integers(2**31)))
        for b in net.biases:
            b[...] = rng.normal(size=b.shape)
        X = rng.normal(size=(n, sizes[0]))
        if loss == "cross_entropy":
            Y = np.eye(sizes[-1])[rng.integers(sizes[-1], size=n)]
        else:
            Y = rng.uniform(size=(n, sizes[-1]))
        if any(np.any(g) for g in net.gradients(X, Y)):
            return net, X, Y
    raise AssertionError(f"no network {sizes} ({activation}, {loss}) with a nonzero gradient")


def engine_loss(engine: Namespace, net: MLP, X: np.ndarray, Y: np.ndarray):
    return engine["network_loss"](X, Y, net.weights, net.biases or None, net.activation,
                                  net.loss_name)


def engine_gradients(engine: Namespace, net: MLP, X: np.ndarray, Y: np.ndarray):
    L, params, zs = engine_loss(engine, net, X, Y)
    L.backward()
    return L.data, [engine["grad_array"](P) for P in params], [engine["grad_array"](z) for z in zs]


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("loss", ["half_sse", "cross_entropy"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("sizes", ARCHITECTURES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_engine_agrees_with_mlp(engine: Namespace, seed: int, sizes: list[int], activation: str,
                                loss: str, bias: bool):
    """Loss, parameter gradients and output delta of the engine vs gradbook.MLP, batches of 1
    and of several examples."""
    rng = np.random.default_rng([seed, len(sizes), sizes[1]])
    for n in (1, int(rng.integers(2, 8))):
        net, X, Y = random_case(sizes, activation, loss, bias, n, rng)
        value, grads, z_grads = engine_gradients(engine, net, X, Y)
        assert value == pytest.approx(net.loss(X, Y), rel=1e-12)
        expected = net.gradients(X, Y)
        assert [g.shape for g in grads] == [g.shape for g in expected]
        for ours, theirs in zip(grads, expected, strict=True):
            assert relative_error(ours, theirs) < EXACT_TOL
        Y_hat = net.forward(X)  # the engine's ∂L/∂z_K is the output delta, (8.1) or (8.5)
        delta_K = Y_hat - Y if loss == "cross_entropy" else (Y_hat - Y) * net.act.df(Y_hat)
        assert relative_error(z_grads[-1], delta_K) < EXACT_TOL


@pytest.mark.parametrize("loss", ["half_sse", "cross_entropy"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("sizes", ARCHITECTURES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("seed", [0, 1])
def test_engine_agrees_with_central_differences(engine: Namespace, seed: int, sizes: list[int],
                                                activation: str, loss: str):
    """The engine's gradients vs central differences of its own forward pass (with biases)."""
    rng = np.random.default_rng([seed, 7, len(sizes), sizes[1]])
    net, X, Y = random_case(sizes, activation, loss, True, int(rng.integers(1, 6)), rng)
    _, grads, _ = engine_gradients(engine, net, X, Y)
    assert gradcheck(lambda: engine_loss(engine, net, X, Y)[0].data, net.parameters, grads,
                     EPS) < FD_TOL


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_backward_from_a_weighted_sum_is_the_vjp_of_8_3(engine: Namespace, activation: str):
    """∂(Σ G * z_k)/∂z_{k-1} = (G · W_kᵀ) * f'(z_{k-1}): a vector-Jacobian product (12.3)."""
    rng = np.random.default_rng(5)
    n, d_prev, d_k = 4, 3, 5
    z_prev = rng.normal(size=(n, d_prev))
    W = rng.normal(size=(d_prev, d_k))
    G = rng.normal(size=(n, d_k))
    leaves, matmul, total = engine["leaves"], engine["matmul"], engine["total"]
    z_leaves = leaves(z_prev)
    l_prev = [[getattr(v, activation)() for v in row] for row in z_leaves]
    z_k = matmul(l_prev, W.tolist())
    total(G[i, j] * z_k[i][j] for i in range(n) for j in range(d_k)).backward()
    l_data = np.array([[v.data for v in row] for row in l_prev])
    slope = {"sigmoid": l_data * (1 - l_data), "tanh": 1 - l_data * l_data,
             "relu": (l_data > 0).astype(float)}[activation]
    assert relative_error(engine["grad_array"](z_leaves), (G @ W.T) * slope) < EXACT_TOL


# -- a broken engine is caught -------------------------------------------------------------------

BREAKAGES = {
    "= for += at forks": ("parent.grad += local * v.grad", "parent.grad = local * v.grad"),
    "order not reversed": ("for v in reversed(order):", "for v in order:"),
    "multiply does not swap": ("(other.data, self.data), \"*\"", "(self.data, other.data), \"*\""),
    "sigmoid slope": ("(s * (1.0 - s),)", "(s,)"),
    "tanh slope": ("(1.0 - t * t,)", "(1.0 - t,)"),
    "power slope": ("(k * self.data ** (k - 1),)", "(k * self.data**k,)"),
}


@pytest.mark.parametrize("kind", sorted(BREAKAGES))
def test_a_broken_engine_disagrees_with_mlp(kind: str):
    """Each broken rule makes the engine's gradients of a random network differ from MLP's."""
    broken = load_engine(BREAKAGES[kind])
    rng = np.random.default_rng(11)
    errors = []
    for activation in ("sigmoid", "tanh"):
        net, X, Y = random_case([3, 4, 2], activation, "half_sse", True, 4, rng)
        _, grads, _ = engine_gradients(broken, net, X, Y)
        errors.append(max(relative_error(g, h)
                          for g, h in zip(grads, net.gradients(X, Y), strict=True)))
    assert max(errors) > 1e-3, kind
