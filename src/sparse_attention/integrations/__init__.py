"""Where users meet the package: ONNX export (and, later, Hugging Face transformers)."""
