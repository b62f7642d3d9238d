"""Studies of the paper's claims: their runs (``studies``), the runner (``run``), the report and
plots (``report``, ``plots``), and the analyses the runner also runs by name, gradient flow
(``gradient_flow``) and the feature-reuse heatmaps (``feature_reuse``)."""
