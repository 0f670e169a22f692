"""Serialisation: reading and writing graphs and models (ONNX export and import). Never imports
lowering (alexc.lower / alexc.passes), training, bench or the CLI."""
