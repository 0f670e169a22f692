"""Graph and plan passes: lowering to a runtime Plan (autodiff, fusion, memory planning) in
lower.py, and compile.py, the Executor behind `alexc.compile`."""
