"""Measuring ECHO: report metrics, evaluation runs, image sensitivity and speed benchmarks.

``echo_eval`` sits beside the library :mod:`echo_model` and reads it; the library never imports
``echo_eval``. Entry points: ``echo-eval`` (:mod:`echo_eval.eval_cli`) and ``echo-bench``
(:mod:`echo_eval.bench_cli`).
"""
