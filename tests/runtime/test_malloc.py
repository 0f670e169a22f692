"""The executor's malloc setting: freed memory stays mapped for reuse, unless the user tuned
malloc. Each case runs in a fresh interpreter, since the setting is process-wide."""

import os
import platform
import subprocess
import sys

import pytest
from alexc_runtime import malloc

# Allocates and frees 64 MB (above glibc's largest mmap threshold, 32 MiB), then 96 MB in another
# thread (its own arena), and reports the resident memory the first free left behind.
PROBE = """
import sys, threading, numpy as np
from alexc_runtime.malloc import keep_freed_memory
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) * 1024
applied = keep_freed_memory()
before = rss()
block = np.ones(64 << 20, np.uint8)
del block
kept = rss() - before
other = []
t = threading.Thread(target=lambda: other.append(int(np.ones(96 << 20, np.uint8).sum())))
t.start(); t.join()
print(applied, kept >> 20, other[0] >> 20)
"""


def _probe(**env_changes) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    env.update(env_changes)
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


needs_glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/status"),
    reason="needs glibc's malloc and Linux's /proc",
)


@needs_glibc
def test_freed_memory_stays_mapped_for_the_next_allocation():
    applied, kept, other = _probe()
    assert applied == "True"
    assert int(kept) >= 60  # the 64 MB block's pages are still resident after the free
    assert int(other) == 96  # a big allocation in another thread still works


@needs_glibc
@pytest.mark.parametrize(
    "env", [{"MALLOC_MMAP_MAX_": "65536"}, {"GLIBC_TUNABLES": "glibc.malloc.check=0"}]
)
def test_a_malloc_setting_of_the_users_wins(env):
    applied, kept, _ = _probe(**env)
    assert applied == "False"
    assert int(kept) < 8  # glibc's default: the block was unmapped when freed


def test_user_tuned_reads_the_environment(monkeypatch):
    for k in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.rtld.optional_static_tls=512")
    assert not malloc.user_tuned()
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    assert malloc.user_tuned()
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert malloc.user_tuned()
