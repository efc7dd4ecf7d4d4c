"""Release matrices: plan (recipe x profile cells) -> fan-out on an existing engine -> merge.

edgex does not run a cluster of its own: `plan` writes the matrix in the shape CI systems take,
each cell is built by `edgex build --plan plan.json --cell ID` (a pure function of the cell, cached
by a content address), and `merge` checks and joins the cells' manifests into one release.
"""
