"""Inference with a trained run.

Public API::

    from ragsam.inference import PredictOptions, load_run, predict
    model, cfg = load_run("runs/samed")                    # also used by the hybrid retrieval path
    predict("runs/samed", "ct.nii.gz", "out/", PredictOptions(device="cpu"))  # -> out/<case_id>.nii.gz

``load_run`` imports torch/transformers/safetensors/yaml only; ``predict``
imports SimpleITK (through ``ragsam.data``) when called.
"""

from ragsam.inference.predict import (
    Prediction,
    PredictOptions,
    predict,
    predict_labels,
    predict_probabilities,
)
from ragsam.inference.run_loader import load_run, read_run_config

__all__ = ["Prediction", "PredictOptions", "load_run", "predict", "predict_labels", "predict_probabilities", "read_run_config"]
