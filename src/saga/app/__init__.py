"""The application layer: what the `saga` command runs on top of the library.

    run        `saga train`: one run directory, from config to test metrics and the exported model; resumable
    benchmark  `saga benchmark`: a results table, rows x seeds, mean and std, resumable
    demo       `saga demo`: the synthetic table and its HTML report
    report     the self-contained HTML report

The library (saga.data, models, judge, losses, eval, train) never imports this package (tests/test_layers.py).
"""
