"""Serialisation: graph files (YAML) read and written; ONNX export and import."""
