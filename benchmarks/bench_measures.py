"""Training-free measures: our methods against the authors' (spec, section 3), side by side.

For the seed-search network (``8,2,3|4,1,2|4,1,4|4,1,6|32``, C = 32, depths 1,1,1,1) at each image size:

* length distortion on the 10-point curve: ``asvit_zoo.measures.length_distortion`` (one forward-mode
  pass) against the authors' method, one backward pass per output coordinate (256 here) to the curve's
  angles; and one plain forward pass over the same 10-point batch, of the model as is and of the curve network
  (LayerNorms removed, SDPA in every window: the network the length distortion runs);
* NTK condition number on a batch of ``--ntk-batch`` Gaussian images: ``ntk_condition`` (one batched
  backward pass, the Gram matrix, its eigenvalues) against the authors' method, one backward pass per
  sample, then their float32 Gram matrix (einsum) and its eigenvalues; both times cover the whole
  computation, and ours is also given in plain forward passes over the same batch. The baseline's own
  forward time F and time per backward B give the speed-up of a bare forward and backward,
  ``(F + n B) / (F + B)``: a one-pass method cannot do much better (about 11x for the search network on a
  2-core CPU).

Where the per-coordinate baseline would take too long (``--coords``, default: all at 64 px, 16 at 224 px)
it runs that many coordinates and its time is extrapolated linearly (forward + coordinates x the
measured time per coordinate); its value is then compared on those coordinates only. Every method
runs once per round, in an order rotated from round to round, ``--repeats`` rounds after an untimed
one: times are medians, ratios the median of the per-round ratios (two methods of one round see the
same machine load). Threads: torch's default unless ``--threads``.

    python benchmarks/bench_measures.py --sizes 224,64
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from asvit_zoo import AsViT
from asvit_zoo import measures as M

GENOTYPE = '8,2,3|4,1,2|4,1,4|4,1,6|32'
EMBED_DIM = 32
SUBSET_AT_224 = 16  # per-coordinate baseline at 224 px: coordinates actually run


def rounds(cases: Dict[str, Callable[[], Tuple[float, object]]],
           repeats: int) -> Tuple[Dict[str, List[float]], Dict[str, object]]:
    """Run every case once per round, in an order rotated from round to round, ``repeats`` rounds after an
    untimed one. A case returns (seconds, value); returns each case's times and its last value."""
    names = list(cases)
    times: Dict[str, List[float]] = {name: [] for name in names}
    values: Dict[str, object] = {}
    for r in range(repeats + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds, values[name] = cases[name]()
            if r:
                times[name].append(seconds)
    return times, values


def clock(fn: Callable[[], object]) -> Callable[[], Tuple[float, object]]:
    """``fn`` as a case of :func:`rounds`."""
    def run() -> Tuple[float, object]:
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out
    return run


def ratio(times: Dict[str, List[float]], num: str, den: str) -> float:
    """Median over rounds of the ratio of two cases timed in the same round (robust to load drifting)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def per_coordinate_jacobian(net: torch.nn.Module, basis: torch.Tensor, thetas: torch.Tensor, size: int,
                            coords: List[int]) -> Tuple[torch.Tensor, float, float]:
    """The authors' method: the curve built from angles that require grad, then one backward pass per output
    coordinate. Returns ``d f_c / d theta`` of the given coordinates (n, len(coords)), the forward time and
    the time of all backward passes."""
    start = time.perf_counter()
    angles = thetas.clone().requires_grad_(True)
    out = M.pooled_before_norm(net, M.curve_points(basis, angles, (3, size, size))[0])
    forward = time.perf_counter() - start
    start = time.perf_counter()
    grads = [torch.autograd.grad(out[:, c].sum(), angles, retain_graph=True)[0] for c in coords]
    return torch.stack(grads, 1), forward, time.perf_counter() - start


def per_sample_ntk(model: torch.nn.Module, inputs: torch.Tensor) -> Tuple[torch.Tensor, float, float, float]:
    """The authors' method: one batched forward pass, one backward pass per sample, then the Gram matrix of the
    per-sample gradients in float32 (their einsum) and its eigenvalues. Returns the per-sample gradients
    (n, P), the forward time, the time of all backward passes and the time of the Gram matrix and eigenvalues."""
    model.train()
    start = time.perf_counter()
    out = M.pooled_before_norm(model, inputs)
    forward = time.perf_counter() - start
    weights = [p for n, p in model.named_parameters() if 'weight' in n]
    rows = []
    for i in range(len(inputs)):
        model.zero_grad(set_to_none=True)
        out[i:i + 1].backward(torch.ones_like(out[i:i + 1]), retain_graph=True)
        rows.append(torch.cat([p.grad.flatten() for p in weights if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    backward = time.perf_counter() - start - forward
    start = time.perf_counter()
    jacobian = torch.stack(rows)
    eigenvalues = torch.linalg.eigvalsh(torch.einsum('nc,mc->nm', jacobian, jacobian))
    float(eigenvalues[-1] / eigenvalues[0])
    return jacobian, forward, backward, time.perf_counter() - start


def bench_size(size: int, repeats: int, coords: Optional[int], ntk_batch: int,
               targets: List[str]) -> List[Dict[str, str]]:
    torch.manual_seed(0)
    model = AsViT(GENOTYPE, embed_dim=EMBED_DIM, num_classes=1000).train()
    basis, thetas = M.default_curve(size)
    x, _ = M.curve_points(basis, thetas, (3, size, size))
    net = M.curve_network(model)
    inputs = torch.randn(ntk_batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    num_out = net.num_features
    subset = list(range(num_out if coords is None else min(coords, num_out)))

    def per_coordinate() -> Tuple[float, object]:  # extrapolated to all coordinates when running a subset
        jac, t_fwd, t_bwd = per_coordinate_jacobian(net, basis, thetas, size, subset)
        return t_fwd + t_bwd * num_out / len(subset), (jac, t_fwd, t_bwd)

    def per_sample() -> Tuple[float, object]:
        jacobian, t_fwd, t_bwd, t_gram = per_sample_ntk(model, inputs)
        return t_fwd + t_bwd + t_gram, (jacobian, t_fwd, t_bwd, t_gram)

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return fn()
        return run

    times, values = rounds({
        'plain': clock(no_grad(lambda: M.pooled_before_norm(model, x))),
        'no_norms': clock(no_grad(lambda: M.pooled_before_norm(net, x))),
        'plain_ntk': clock(no_grad(lambda: M.pooled_before_norm(model, inputs))),
        'exp': clock(lambda: M.length_distortion(model, basis, thetas)),
        'exp_authors': per_coordinate,
        'ntk': clock(lambda: M.ntk_condition(model, inputs)),
        'ntk_authors': per_sample,
    }, repeats)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    rows: List[Dict[str, str]] = []

    def row(measure: str, method: str, name: str, vs: str = '', agreement: str = '', note: str = '') -> None:
        rows.append(dict(size=str(size), measure=measure, method=method, seconds=f'{seconds[name]:.3f}',
                         ratio=vs, agreement=agreement, note=note))

    le = values['exp']
    row('forward, 10-point batch', 'plain forward (model as is)', 'plain', '1.00x')
    row('forward, 10-point batch', 'curve network (LayerNorms removed, SDPA in every window)', 'no_norms',
        f'{ratio(times, "no_norms", "plain"):.2f}x plain forward')
    exp_vs_forward = ratio(times, 'exp', 'plain')
    row('length distortion', 'forward-mode jvp (ours)', 'exp', f'{exp_vs_forward:.2f}x plain forward',
        note=f'exp = {le:.6g}')
    jac, t_fwd, t_bwd = values['exp_authors']
    velocity = M.curve_velocity(model, basis, thetas)[:, subset]
    diff = float((jac - velocity).abs().max() / velocity.abs().max())
    if len(subset) == num_out:
        base_le = float(jac.double().norm(dim=1).sum())
        agreement = f'exp rel diff {abs(base_le - le) / le:.1e}; d f/d theta max rel diff {diff:.1e}'
        note = f'{num_out} backward passes'
    else:
        agreement = f'd f/d theta on {len(subset)} coordinates: max rel diff {diff:.1e}'
        note = (f'EXTRAPOLATED: ran {len(subset)} of {num_out} coordinates ({t_fwd:.2f}s forward + {t_bwd:.1f}s '
                f'backward in the last round), time = forward + {num_out} x backward per coordinate')
    exp_speedup = ratio(times, 'exp_authors', 'exp')
    row('length distortion', 'per-coordinate backward (authors)', 'exp_authors', f'{exp_speedup:.0f}x ours',
        agreement, note)

    cond, eig = values['ntk']
    jacobian, t_fwd, t_bwd, t_gram = values['ntk_authors']
    jacobian = jacobian.double()  # values compared in float64; the timed run used the authors' float32 Gram
    base_eig = torch.linalg.eigvalsh(jacobian @ jacobian.T)
    base_cond = float(base_eig[-1] / base_eig[0])
    ntk_speedup = ratio(times, 'ntk_authors', 'ntk')
    row(f'forward, NTK batch {ntk_batch}', 'plain forward (model as is)', 'plain_ntk', '1.00x')
    row(f'NTK cond, batch {ntk_batch}', 'one batched backward (ours)', 'ntk',
        f'{ratio(times, "ntk", "plain_ntk"):.2f}x plain forward of the batch', note=f'ntk = {cond:.6g}')
    row(f'NTK cond, batch {ntk_batch}', 'per-sample backward (authors)', 'ntk_authors', f'{ntk_speedup:.1f}x ours',
        f'cond rel diff {abs(base_cond - cond) / base_cond:.1e}; eigenvalues max rel diff '
        f'{float(((base_eig - eig).abs() / base_eig).max()):.1e}',
        f'{ntk_batch} backward passes (last round: {t_fwd:.2f}s forward + {t_bwd / ntk_batch:.2f}s per backward + '
        f'{t_gram:.3f}s Gram matrix and eigenvalues); one forward and one such backward would be '
        f'{(t_fwd + t_bwd) / (t_fwd + t_bwd / ntk_batch):.1f}x faster')

    def verdict(ok: bool) -> str:
        return 'met' if ok else 'MISSED'

    targets.append(f'{size}px: length distortion {exp_vs_forward:.2f}x plain forward (target <= 3x: '
                   f'{verdict(exp_vs_forward <= 3)}), {exp_speedup:.0f}x faster than per-coordinate (target >= 50x: '
                   f'{verdict(exp_speedup >= 50)}); NTK {ntk_speedup:.1f}x faster than per-sample backward '
                   f'(target >= 10x: {verdict(ntk_speedup >= 10)})')
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', default='224,64', help='comma-separated image sizes (default: 224,64)')
    parser.add_argument('--repeats', type=int, default=3, help='timed rounds after a warm-up round (default: 3)')
    parser.add_argument('--coords', type=int, default=None,
                        help=f'coordinates the per-coordinate baseline runs (default: all below 224 px, '
                             f'{SUBSET_AT_224} at 224 px and above)')
    parser.add_argument('--ntk-batch', type=int, default=M.NTK_BATCH, help='NTK batch size (default: 16)')
    parser.add_argument('--threads', type=int, default=None, help="torch threads (default: torch's default)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(',')]
    except ValueError:
        parser.error(f'--sizes must be comma-separated image sizes, got {args.sizes!r}')
    for option, value, low in (('--sizes', min(sizes), 1), ('--repeats', args.repeats, 1),
                               ('--coords', args.coords, 1), ('--ntk-batch', args.ntk_batch, 2),
                               ('--threads', args.threads, 1)):
        if value is not None and value < low:
            parser.error(f'{option} must be at least {low}, got {value}')
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f'# {GENOTYPE}, C={EMBED_DIM}, depths 1,1,1,1; torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'load average {os.getloadavg()[0]:.1f}')
    rows: List[Dict[str, str]] = []
    targets: List[str] = []
    for size in sizes:
        coords = args.coords if args.coords is not None else (SUBSET_AT_224 if size >= 224 else None)
        rows += bench_size(size, args.repeats, coords, args.ntk_batch, targets)
    header = ['size', 'measure', 'method', 'seconds', 'ratio', 'agreement', 'note']
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    for r in rows:
        print('| ' + ' | '.join(r[h] for h in header) + ' |')
    print()
    for line in targets:
        print('- ' + line)


if __name__ == '__main__':
    main()
