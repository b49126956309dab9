"""The engine: Lightning training, graph pre-training, fine-tuning, evaluation, sweeps and reports.

It needs the full set of dependencies (Lightning, kornia, scikit-learn, matplotlib, optuna); the library
layer (``hscl``, ``hscl.losses``, ``hscl.hardening``, ``hscl.geometry``) does not import it.
"""
