"""Serialisation: graph files (YAML) read and written; ONNX export and import. Never imports
lowering (alexc.passes), training, bench or the CLI."""
