"""The synthetic anomaly families of the ``synth`` detector, by name (torch-free: the config checks them)."""

SHAPES = ("ellipsoid", "box")
"""Mask families. ``ellipsoid``: a rotated ellipsoid, radially deformed into a blob. ``box``: a rotated
cuboid, its semi-axes drawn as the ellipsoid's; both with the same smoothstep edge."""

FILLS = ("patch", "constant", "shift", "noise", "blur")
"""What the mask is filled with (x in the normalised intensity range, about [0, 1]; α ~ U(alpha)):

- ``patch``: a patch of another image of the batch, shifted (foreign patch interpolation, Tan et al.);
- ``constant``: a constant c ~ U(0, 1) (MOOD's uniform-intensity anomaly);
- ``shift``: x ± d, d ~ U(0.1, 0.5) (a brighter or darker region);
- ``noise``: x + a·n, a ~ U(0.05, 0.3), n a unit Gaussian field smoothed by σ ~ U(0, 1.5) voxels and rescaled to unit SD (a foreign texture);
- ``blur``: x smoothed by a Gaussian of σ ~ U(1, 3) voxels (texture lost).

Every fill but ``patch`` is clipped to the batch's intensity range (a value no image has would be a
trivial cue). The blend is x' = (1 − α·m)·x + α·m·f; the target is α·m for every family. None was designed from
the annotated nodules: they are the generic families of the MOOD challenge's self-supervised entries.
"""

__all__ = ["FILLS", "SHAPES"]
