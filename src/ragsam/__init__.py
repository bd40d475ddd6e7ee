"""ragsam: Segment Anything for abdominal CT.

Parameter-efficient fine-tuning of SAM (SAMed, SAMed_s, Med-SA) and
retrieval-augmented few-shot segmentation with DINOv2 + Faiss + SAM 2 memory
(the RAG-SAM paper). The package layout follows the pipeline:
``data`` -> ``models`` (+ ``peft``) -> ``training`` -> ``inference`` ->
``retrieval`` -> ``evaluation`` -> ``cli``.

Importing ``ragsam`` has no side effects and pulls in nothing heavy.
"""

__version__ = "0.1.0"
