"""bench.cpu_memory: the switch that keeps freed heap memory (no page faults on big tensors)."""
import subprocess
import sys

CHECK = ("import ctypes, bench.cpu_memory as m; r = m.keep_freed_memory(); "
         "assert m.keep_freed_memory() is r; print(r)")


def run(env_value: str | None) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k != "TNBENCH_KEEP_FREED_MEMORY"}
    if env_value is not None:
        env["TNBENCH_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


def test_on_by_default_on_glibc_and_off_when_asked():
    import platform

    expected = "True" if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" else "False"
    assert run(None) == expected
    assert run("0") == "False"
    assert run("off") == "False"


def test_a_cpu_worker_says_so_in_its_records_env():
    import torch

    from bench.backends.local import device_info

    info = device_info(torch.device("cpu"))
    assert isinstance(info["heap_keeps_freed"], bool)
