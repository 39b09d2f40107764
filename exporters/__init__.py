"""embslim exporters: torch -> ONNX, graph optimisation, quantization, mobile format."""
