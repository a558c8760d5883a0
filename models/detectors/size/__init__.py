"""Size baseline: the radius of the largest ball of dense tissue at the patch centre."""
