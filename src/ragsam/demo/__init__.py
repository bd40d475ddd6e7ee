"""The whole method in one call: ``ragsam demo`` (:func:`ragsam.demo.run.run_demo`).

``budget`` (how much work; the weights come from :mod:`ragsam.hub.detect`), ``stages`` (one row of the
table each: fine-tune + predict, retrieval, evaluation), ``summary`` (what ran, ``summary.json``),
``report`` (``report.md``), ``run`` (the stages in order, written atomically).
"""
