"""The onnxruntime backend: runs an exported model behind the executor's predictor interface.

onnxruntime is imported lazily, so the NumPy runtime works without it. Threads follow DESIGN §6:
one setting governs everything, with no inter-op parallelism and no spinning workers (spinning
threads would steal the cores from whatever runs next).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OrtPredictor:
    """Inference through onnxruntime's CPU provider: ``predict(x)`` returns the first output."""

    name = "onnxruntime"

    def __init__(self, model: bytes | str | Path, threads: int):
        import onnxruntime as ort

        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if isinstance(model, (str, Path)):
            model = str(model)
            if not Path(model).is_file():
                raise FileNotFoundError(f"{model}: no such ONNX model file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = threads
        self.session = ort.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output of the model for the float32 NCHW batch ``x``, in model order."""
        feed = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        return self.session.run(self.output_names, feed)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The model's first output for the float32 NCHW batch ``x``."""
        feed = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        return self.session.run(self.output_names[:1], feed)[0]
