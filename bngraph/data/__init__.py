"""Data files shipped with bngraph: digits.npz (see DIGITS_LICENSE.txt); loaded by bngraph.datasets."""
