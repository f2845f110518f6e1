"""A short numerical self-check of the geometry core, printed by ``lorentz-rag info``.

Every number is computed here, against a closed form, so what it prints is true of this installation.
"""

from __future__ import annotations

import torch

from lorentz_rag.geometry import lorentz, pooling


def _radial_pair(r: float, delta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Two points on one geodesic through the origin (c = 1) at radii r and r + delta."""
    direction = torch.zeros(8, dtype=torch.float64)
    direction[0] = 1.0
    x = lorentz.expmap0(r * direction, 1.0).to(dtype)
    y = lorentz.expmap0((r + delta) * direction, 1.0).to(dtype)
    return x, y


def distance_accuracy_table(
    delta: float = 1e-2, radii=(1.0, 4.0, 8.0, 10.0)
) -> list[tuple[float, float, float]]:
    """Relative error of the float32 distance ``d = delta`` along a radius, stable form vs arcosh form.

    Returns rows ``(radius, rel_err_stable, rel_err_arcosh)``.
    """
    rows = []
    for r in radii:
        x, y = _radial_pair(r, delta, torch.float32)
        stable = lorentz.geodesic_distance(x, y, 1.0).item()
        arg = (-lorentz.inner(x, y)).clamp_min(1.0)
        naive = torch.acosh(arg).item()
        rows.append((r, abs(stable - delta) / delta, abs(naive - delta) / delta))
    return rows


def geometry_report() -> str:
    lines = ["Geometry self-check (curvature -1, float32 inputs):"]
    lines.append(
        f"  {'radius':>6}  {'d exact':>8}  {'stable form':>11}  {'arcosh form':>11}  (relative error)"
    )
    for r, stable, naive in distance_accuracy_table():
        lines.append(f"  {r:6.1f}  {1e-2:8.0e}  {stable:11.2e}  {naive:11.2e}")
    # OEM pulls the pooled point outward: two tokens at radii 0.5 and 3 along different axes.
    tangent = torch.zeros(1, 2, 4, dtype=torch.float64)
    tangent[0, 0, 0], tangent[0, 1, 1] = 0.5, 3.0
    pts = lorentz.expmap0(tangent, 1.0)
    mask = torch.ones(1, 2)
    r_centroid = lorentz.radius(pooling.lorentz_centroid(pts, mask, 1.0), 1.0).item()
    r_em = lorentz.radius(pooling.einstein_midpoint(pts, mask, 1.0), 1.0).item()
    r_oem = lorentz.radius(pooling.outward_einstein_midpoint(pts, mask, 1.0, p=1.0), 1.0).item()
    lines.append(
        "  pooled radius of tokens at radii 0.5 and 3.0: "
        f"centroid {r_centroid:.3f}, Einstein midpoint {r_em:.3f}, OEM(p=1) {r_oem:.3f}"
    )
    o = lorentz.origin(3, 1.0, dtype=torch.float64)
    lines.append(f"  d(o, o) = {lorentz.geodesic_distance(o, o, 1.0).item():g}")
    return "\n".join(lines)
