"""Prompted SAM / MedSAM baselines (the paper's Table 1 rows "SAM 1 point" ... "MedSAM BBox 0.5").

``prompts`` simulates prompts from the ground truth, :mod:`ragsam.models.promptable_sam` loads SAM's
original promptable head, ``prompted`` segments slices, ``sources`` reads raw
data or a prepared cache, and ``run.run_baseline`` ties them to the evaluation.
"""
