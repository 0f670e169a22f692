"""The `alexc` command: the runtime's process-wide tuning first, before anything loads NumPy
(OpenBLAS reads its spin setting only then), then the CLI."""


def main():
    import alexc_runtime

    alexc_runtime.configure(
        keep_freed_memory=True, blas_thread_timeout=alexc_runtime.BLAS_THREAD_TIMEOUT
    )
    from alexc.cli import main as cli

    return cli()


if __name__ == "__main__":
    main()
